"""The privacy desk's words: Dutch, the language of the municipality's privacy officers, unless
``?lang=en`` (or the form's ``lang``) asks for English. Templates look words up here, so no page
has a sentence of its own; the messages about the person fields say what the privacy API's 422
says (exactly one of the three, each of them valid), in the page's language."""

from __future__ import annotations

WORDS: dict[str, dict[str, str]] = {
    "nl": {
        "app": "Privacyloket",
        "product": "Civic Signals",
        "other_language": "English",
        "login_title": "Inloggen",
        "login_heading": "Inloggen bij het privacyloket",
        "login_scope": "Log in met een API-sleutel met de scope",
        "login_kept": "De sleutel wordt niet bewaard: u blijft ingelogd tot de sessie verloopt of de "
        "sleutel wordt ingetrokken.",
        "api_key": "API-sleutel",
        "sign_in": "Inloggen",
        "sign_out": "Uitloggen",
        "key_refused": "Deze sleutel wordt niet geaccepteerd.",
        "key_lacks_scope": "Deze sleutel mist de scope 'privacy:admin'.",
        "sign_in_with": "Inloggen via {municipality}",
        "sign_in_with_intro": "Medewerkers van de gemeente loggen in met hun account bij de gemeente.",
        "or_with_key": "Of log in met een API-sleutel met de scope",
        "oidc_not_offered": "Deze gemeente biedt hier geen inloggen via haar eigen inlogdienst.",
        "oidc_failed": "Inloggen via de inlogdienst van de gemeente is mislukt: {detail}",
        "signed_in_title": "Ingelogd",
        "signed_in": "U bent ingelogd via {municipality}.",
        "continue": "Verder naar het privacyloket",
        "signing_out_title": "Uitloggen",
        "signing_out": "U bent hier uitgelogd. U gaat nu naar de inlogdienst van {municipality} om ook "
        "daar uit te loggen, zodat wie na u deze computer gebruikt niet als u inlogt.",
        "sign_out_at": "Uitloggen bij {municipality}",
        "person_lacks_scope": "Uw account bij {municipality} mist de scope 'privacy:admin'. Vraag de "
        "beheerder van de inlogdienst om u toegang tot het privacyloket te geven.",
        "too_many_failures": "Te veel mislukte inlogpogingen vanaf dit adres. Er is geen sleutel "
        "gecontroleerd. Wacht {seconds} seconde(n) en probeer het dan opnieuw.",
        "find_title": "Persoon zoeken",
        "find_intro": "Zoek de meldingen van de persoon die om inzage of verwijdering vraagt. Vul precies "
        "één gegeven in, zoals de persoon het in het verzoek noemt. Zoeken verandert niets.",
        "email": "E-mailadres",
        "phone": "Telefoonnummer",
        "tracking_code": "Volgnummer",
        "email_hint": "zoals de melder het opgaf",
        "phone_hint": "bijvoorbeeld 06 1234 5678",
        "tracking_code_hint": "vindt ook een melding waarvan de gegevens al zijn verwijderd",
        "find": "Zoeken",
        "errors": "Controleer het formulier:",
        "exactly_one": "Vul precies één van deze velden in.",
        "bad_email": "Dit is geen geldig e-mailadres.",
        "bad_phone": "Dit is geen geldig telefoonnummer.",
        "bad_tracking_code": "Een volgnummer heeft 8 tot 20 tekens.",
        "result_title": "Gevonden meldingen",
        "selected_by": "Gezocht op",
        "found": "{count} melding(en) gevonden.",
        "found_none": "Er zijn geen meldingen van deze persoon gevonden. Het inzagedocument zegt dat intake "
        "niets van deze persoon bewaart.",
        "received": "Ontvangen",
        "erased_before": "Eerder verwijderd",
        "not_erased": "nee",
        "access_heading": "Inzageverzoek (AVG art. 15 en 20)",
        "access_intro": "Download het inzagedocument (JSON) met alles wat intake van deze persoon bewaart "
        "en de interne notities van medewerkers bij de zaken. Controleer die op gegevens van anderen "
        "voordat u het document verstuurt. Elke melding wordt vastgelegd als door u ingezien.",
        "download": "Download inzagedocument",
        "erase_heading": "Verwijderverzoek (AVG art. 17)",
        "erase_intro": "Verwijdert de contactgegevens, bijlagen en eigen teksten van deze persoon uit "
        "{count} melding(en). De andere diensten volgen. Dit kan niet ongedaan worden gemaakt.",
        "confirm": "Ik heb de identiteit van de verzoeker gecontroleerd en wil {count} melding(en) "
        "verwijderen.",
        "confirm_needed": "Vink aan dat u de identiteit van de verzoeker hebt gecontroleerd.",
        "signals_changed": "De meldingen van deze persoon zijn veranderd sinds u zocht. Er is niets "
        "verwijderd: controleer de lijst hierboven en bevestig opnieuw.",
        "case_notes_unavailable": "Het inzagedocument kan nu niet worden gemaakt: de zaakbehandeling "
        "(routing), die de interne notities bij de zaken bewaart, antwoordt niet. Er is niets "
        "opgevraagd of vastgelegd. Probeer het over een minuut opnieuw.",
        "mail_record_unavailable": "Het inzagedocument kan nu niet worden gemaakt: de berichtendienst "
        "(notifier), die bijhoudt welke e-mails over de meldingen zijn verstuurd, antwoordt niet. Er "
        "is niets opgevraagd of vastgelegd. Probeer het over een minuut opnieuw.",
        "erase": "Verwijder gegevens",
        "reauth_always": "Voor elke verwijdering vraagt het loket u eerst opnieuw in te loggen bij "
        "{municipality}.",
        "reauth_after": "Bent u langer dan {age} geleden ingelogd, dan vraagt het loket u eerst opnieuw in "
        "te loggen bij {municipality}.",
        "one_minute": "1 minuut",
        "minutes": "{count} minuten",
        "one_second": "1 seconde",
        "seconds": "{count} seconden",
        "reconfirm_key": "Uw API-sleutel",
        "reconfirm_key_hint": "Typ de sleutel waarmee u bent ingelogd opnieuw: zo weet het loket dat u "
        "het bent die verwijdert.",
        "key_needed": "Typ uw API-sleutel om het verwijderen te bevestigen. Er is niets verwijderd.",
        "key_not_the_login": "Dit is niet de sleutel waarmee u bent ingelogd. Er is niets verwijderd.",
        "reauth_title": "Opnieuw inloggen",
        "reauth_going": "Verwijderen kan alleen kort nadat u bent ingelogd. U gaat nu naar de inlogdienst "
        "van {municipality} om opnieuw in te loggen. Daarna ziet u de meldingen weer en bevestigt u het "
        "verwijderen opnieuw. Er is nog niets verwijderd.",
        "reauth_go": "Opnieuw inloggen bij {municipality}",
        "reauth_done_title": "Opnieuw ingelogd",
        "reauth_done": "U bent opnieuw ingelogd via {municipality}. Er is nog niets verwijderd.",
        "reauth_continue": "Verder naar de bevestiging",
        "signed_in_again": "U bent opnieuw ingelogd. Er is nog niets verwijderd: controleer de meldingen "
        "hierboven en bevestig opnieuw om ze te verwijderen.",
        "reauth_failed_title": "Niet opnieuw ingelogd",
        "reauth_failed": "Opnieuw inloggen via de inlogdienst van de gemeente is mislukt: {detail}",
        "nothing_erased": "Er is niets verwijderd.",
        "reauth_signed_out": "U bent daarom hier uitgelogd.",
        "back_to_desk": "Terug naar het privacyloket",
        "nothing_to_erase": "Er is niets te verwijderen.",
        "erased_title": "Gegevens verwijderd",
        "erased_counts": "Verwijderd: {signals} melding(en), {contacts} contactgegeven(s), {files} "
        "bijlage(n).",
        "erased_note": "De andere diensten krijgen bericht en verwijderen hun kopie. Zoek opnieuw op "
        "volgnummer om te zien wat er nog van de melding over is.",
        "new_search": "Nieuwe zoekopdracht",
        "forbidden_title": "Formulier verlopen",
        "forbidden": "Dit formulier hoort niet bij uw huidige sessie (bijvoorbeeld na opnieuw inloggen). "
        "Er is niets gewijzigd. Begin opnieuw.",
        "no_store": "Deze pagina bevat persoonsgegevens en wordt niet bewaard door de browser.",
    },
    "en": {
        "app": "Privacy desk",
        "product": "Civic Signals",
        "other_language": "Nederlands",
        "login_title": "Sign in",
        "login_heading": "Sign in to the privacy desk",
        "login_scope": "Sign in with an API key that has the scope",
        "login_kept": "The key is not stored: you stay signed in until the session ends or the key is "
        "revoked.",
        "api_key": "API key",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "key_refused": "This key is not accepted.",
        "key_lacks_scope": "This key lacks the scope 'privacy:admin'.",
        "sign_in_with": "Sign in with {municipality}",
        "sign_in_with_intro": "Municipal staff sign in with their account at the municipality.",
        "or_with_key": "Or sign in with an API key that has the scope",
        "oidc_not_offered": "This municipality does not offer signing in with its own sign-in service here.",
        "oidc_failed": "Signing in through the municipality's sign-in service failed: {detail}",
        "signed_in_title": "Signed in",
        "signed_in": "You are signed in with {municipality}.",
        "continue": "Continue to the privacy desk",
        "signing_out_title": "Signing out",
        "signing_out": "You are signed out here. You are now taken to {municipality}'s sign-in service "
        "to sign out there too, so that whoever uses this computer after you is not signed in as you.",
        "sign_out_at": "Sign out at {municipality}",
        "person_lacks_scope": "Your account at {municipality} lacks the scope 'privacy:admin'. Ask the "
        "administrator of the sign-in service to give you access to the privacy desk.",
        "too_many_failures": "Too many failed sign-ins from this address. No key was checked. Wait "
        "{seconds} second(s), then try again.",
        "find_title": "Find a person",
        "find_intro": "Find the signals of the person who asks for access or erasure. Fill in exactly one "
        "detail, as the person gives it in the request. Finding changes nothing.",
        "email": "E-mail address",
        "phone": "Phone number",
        "tracking_code": "Tracking code",
        "email_hint": "as the reporter gave it",
        "phone_hint": "for example 06 1234 5678",
        "tracking_code_hint": "also finds a signal whose personal data was erased already",
        "find": "Find",
        "errors": "Please check the form:",
        "exactly_one": "Fill in exactly one of these fields.",
        "bad_email": "This is not a valid e-mail address.",
        "bad_phone": "This is not a valid phone number.",
        "bad_tracking_code": "A tracking code has 8 to 20 characters.",
        "result_title": "Signals found",
        "selected_by": "Found by",
        "found": "{count} signal(s) found.",
        "found_none": "No signals of this person were found. The access document says that intake keeps "
        "nothing of this person.",
        "received": "Received",
        "erased_before": "Erased before",
        "not_erased": "no",
        "access_heading": "Access request (GDPR art. 15 and 20)",
        "access_intro": "Download the access document (JSON) with everything intake keeps of this person "
        "and staff's internal notes on the cases. Check those for other people's data before you send "
        "the document. Each signal is audited as read by you.",
        "download": "Download access document",
        "erase_heading": "Erasure request (GDPR art. 17)",
        "erase_intro": "Erases this person's contact data, attachments and own texts from {count} "
        "signal(s). The other services follow. This cannot be undone.",
        "confirm": "I have verified the requester's identity and want to erase {count} signal(s).",
        "confirm_needed": "Tick the box to confirm that you verified the requester's identity.",
        "signals_changed": "This person's signals changed since you searched. Nothing was erased: "
        "check the list above and confirm again.",
        "case_notes_unavailable": "The access document cannot be made now: case handling (routing), "
        "which keeps the internal notes of the cases, does not answer. Nothing was read or recorded. "
        "Try again in a minute.",
        "mail_record_unavailable": "The access document cannot be made now: the messaging service "
        "(notifier), which keeps which e-mails were sent about the signals, does not answer. Nothing "
        "was read or recorded. Try again in a minute.",
        "erase": "Erase personal data",
        "reauth_always": "For every erasure the desk first asks you to sign in again with {municipality}.",
        "reauth_after": "If you signed in more than {age} ago, the desk first asks you to sign in again "
        "with {municipality}.",
        "one_minute": "1 minute",
        "minutes": "{count} minutes",
        "one_second": "1 second",
        "seconds": "{count} seconds",
        "reconfirm_key": "Your API key",
        "reconfirm_key_hint": "Type the key you signed in with again, so that the desk knows it is you "
        "who erases.",
        "key_needed": "Type your API key to confirm the erasure. Nothing was erased.",
        "key_not_the_login": "This is not the key you signed in with. Nothing was erased.",
        "reauth_title": "Sign in again",
        "reauth_going": "Erasing needs a recent sign-in. You are now taken to {municipality}'s sign-in "
        "service to sign in again. Then you see the signals again and confirm the erasure once more. "
        "Nothing has been erased yet.",
        "reauth_go": "Sign in again with {municipality}",
        "reauth_done_title": "Signed in again",
        "reauth_done": "You signed in again with {municipality}. Nothing has been erased yet.",
        "reauth_continue": "Continue to the confirmation",
        "signed_in_again": "You signed in again. Nothing has been erased yet: check the signals above and "
        "confirm again to erase them.",
        "reauth_failed_title": "Not signed in again",
        "reauth_failed": "Signing in again through the municipality's sign-in service failed: {detail}",
        "nothing_erased": "Nothing was erased.",
        "reauth_signed_out": "You are therefore signed out here.",
        "back_to_desk": "Back to the privacy desk",
        "nothing_to_erase": "There is nothing to erase.",
        "erased_title": "Personal data erased",
        "erased_counts": "Erased: {signals} signal(s), {contacts} contact(s), {files} attachment(s).",
        "erased_note": "The other services are told and erase their copies. Search by tracking code to see "
        "what is left of a signal.",
        "new_search": "New search",
        "forbidden_title": "Form expired",
        "forbidden": "This form does not belong to your current session (for example after signing in "
        "again). Nothing was changed. Please start again.",
        "no_store": "This page holds personal data and is not kept by the browser.",
    },
}

#: The message beside a person field whose value is not valid, by field.
INVALID_FIELD = {"email": "bad_email", "phone": "bad_phone", "tracking_code": "bad_tracking_code"}
