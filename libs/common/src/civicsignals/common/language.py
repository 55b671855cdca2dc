"""Which language a signal is written in: Dutch, English, Turkish, Polish, Arabic or another.

The language sets the language of the replies a resident gets (notifier's mail, intake's
tracking page: Dutch and English always, Turkish, Polish and Arabic where the municipality lists
them in ``languages``) and shows in insights, so it is needed on every signal, also when the
portal did not say. Intake guesses it on arrival; the classifier fills it when intake could not.
A full language identifier (fastText, CLD3) would be a large dependency for a six-way answer;
residents' reports are short, but they are full of function words ("de", "het", "niet" / "the",
"not" / "ve", "bir", "değil" / "nie", "się", "jest"), and those settle it almost always. So this
is a small scorer:

* a text mostly in Arabic script is ``"ar"`` (Moroccan Darija written in Arabic letters too);
  mostly in another script (Cyrillic, Chinese ...) ``"other"``;
* each word found in the list of frequent words of one language scores a point for it (words two
  lists share are in neither); a word with a letter only Turkish writes (ı, ğ, ş) scores for
  Turkish, one with a letter only Polish writes (ą, ę, ł, ń, ś, ź, ż, ć) for Polish, so "çöp var"
  and "śmieci" count, and the lists hold the spellings without diacritics that phones produce
  ("cok", "degil", "prosze", "juz");
* a few spelling patterns that are typical of Dutch ("ij", "oe", "sch", "aa") or English ("th",
  "wh", "ing" at a word end) add half a point each, which decides texts that are mostly nouns
  ("lantaarnpaal kapot", "broken streetlight");
* frequent words of German, French, Spanish, Portuguese and Italian ("und", "nicht", "est",
  "dans", "hay", "calle", "não", "rua") score for ``"other"``, which competes like a language, so
  a German report full of Dutch-looking spellings is not Dutch;
* a text in which many words have letters that none of these languages uses (ñ, ß, ő ...) is
  ``"other"`` (Spanish, German, Hungarian ...), unless Turkish or Polish scored;
* the largest score wins if it is at least 1 and ahead of the next by a margin; otherwise the
  answer is ``"other"`` (also for texts with no letters at all).

Measured on the Dutch and English sides of xSID (800 parallel voice-assistant commands, most of
them four to eight words), on residents' reports in Turkish, Polish and Arabic
(``bench/classifier/coldstart_reports_{tr,pl,ar}.csv``) and on messages in German, French,
Spanish, Portuguese and Italian (``bench/classifier/language_other.csv``), all written by people who did
not see these lists: see ``services/classifier/tests/test_language.py``.
"""

# Turkish writes a dotless i (U+0131): the letters below are meant as they are.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal

__all__ = ["Language", "detect_language", "guess_language"]

Language = Literal["nl", "en", "tr", "pl", "ar", "other"]

_DUTCH = frozenset(
    """
    de het een en of maar want dat die dit deze wat wie waar wanneer hoe waarom welke ik jij je u hij
    zij ze wij we jullie mijn jouw uw zijn haar ons onze hun er hier daar niet geen nooit wel ook nog
    al toch dus dan als om te tot van voor na naar op aan bij met door uit tegen tussen zonder sinds
    ben bent was waren wordt worden werd heb hebt heeft hebben had hadden kan kun kunt kunnen kon zou
    zouden wil wilt willen moet moeten mag mogen ga gaat gaan doe doet doen staat staan ligt liggen zit
    zitten erg heel veel meer zeer graag alstublieft dank bedankt beste geachte hallo goedemorgen
    goedemiddag vandaag morgen gisteren straat weg alweer steeds elke iedere iets niets iemand
    niemand mee moeten weer even nu ons zich zelf kapot vol vuil gemeente melding alle alles laat
    laten zien kijk vind vinden speel spelen voeg toe zet geef stuur maak annuleer verwijder wis
    koud warm buiten binnen hoeveel uur dag week maand jaar tijd bericht vraag klacht huis auto
    fiets stoep boom buurt wijk buren overlast lawaai gevaarlijk onze deur naast achter tegenover
    is in over me we has had
        """.split()  # noqa: SIM905 - a block of words reads better than quoted strings
)
_ENGLISH = frozenset(
    """
    the a an and or but because that this these those what who where when how why which you he she
    they we my your his her our their there here not no never also still yet so then than to of for
    from with without by at on into about against between since am are was were be been being has
    have had can could would should will shall may might must do does did done get got please thanks
    thank hello dear today tomorrow yesterday street road again every each something nothing someone
    nobody it its is just now some any all very much more most there's it's i'm don't can't won't
    broken full dirty council report i me show find play add set give send make cancel delete remove
    cold warm outside inside many time day week month year message question complaint house car
    bike pavement tree neighbourhood neighborhood neighbours noise dangerous door next behind
        """.split()  # noqa: SIM905
)
_TURKISH = frozenset(
    """
    ve veya ya bir bu şu su o için icin çok cok ile ama fakat ancak çünkü cunku var yok değil degil
    ben benim biz bizim siz sizin onun onlar gibi daha hala hâlâ artık artik hep yine gene hiç hic
    her kadar sonra önce once lütfen lutfen merhaba selam rica ederim teşekkür tesekkur teşekkürler
    mı mi mu mü ne neden niye nasıl nasil nerede zaman kim kimse biri birisi şey sey tane gün gun
    gündür gundur hafta haftadır haftadir ay yıl yil saat sokak sokakta sokağın sokagin sokağımızda
    cadde caddesi ev evin evimin evimizin önünde onunde yanında yaninda arkasında arkasinda olan
    oldu olduğu oluyor olmuyor yapın yapin yapılsın edin ediyor ediyorum istiyorum lazım lazim gerek
    gerekiyor belediye belediyeye belediyesi bozuk kırık kirik çalışmıyor calismiyor yanmıyor
    yanmiyor komşu komsu komşular komsular apartman mahalle çöp cop
    """.split()  # noqa: SIM905
)
_POLISH = frozenset(
    """
    nie się sie jest są sa był byl była byla było bylo być byc że ze w z od po za przy przed pod nad
    jak ale tak już juz bardzo mam mamy ma mój moj moja moje mojego nasz nasza nasze naszego naszej
    oraz lub albo czy co gdzie kiedy dlaczego proszę prosze dzień dzien dobry dziękuję dziekuje
    ulica ulicy ulicę ulice obok bo tego tej ten który ktory która ktora które ktore można mozna
    trzeba jeszcze znowu znów znow też tez tylko wszystko nikt ktoś ktos coś cos nic tydzień
    tydzien tygodnia tygodni dni dnia gmina gminy gminę urząd urzad bloku blok domu dom mieszkania
    mieszkanie szanowni państwo panstwo pan pani sąsiad sasiad sąsiedzi sasiedzi śmieci smieci
    zepsuty zepsuta nie działa dziala
    """.split()  # noqa: SIM905
)
#: Frequent words of languages residents write in that are answered in Dutch (German, French,
#: Spanish, Portuguese, Italian): they score for ``"other"``, so that "Die Straßenlaterne ist seit
#: Tagen kaputt" is not taken for Dutch by its "ie" and "aa". Words any of the four lists above
#: holds, and words Dutch or English texts use often ("per", "pas", "via", "den" of Den Haag,
#: "e" of "e-mail", "as", "plus", "comment", "man", "je"), are left out: they decide nothing here.
_OTHER = frozenset(
    """
    der das und ist nicht ich mit auf ein eine einen einem einer dem des zu von für fuer sich auch
    noch nur schon sehr bitte danke wird werden wurde wurden haben hat habe hatte sind seit unser
    unsere unseren meine meinen mein wir ihr ihre uns mir mich kein keine keinen immer wieder jetzt
    heute gestern tagen woche wochen straße strasse müll muell kaputt stadt gemeinde wohnung nachbarn
    lärm laerm bei nach über ueber unter oder aber dass weil dort gibt kann können koennen muss soll
    vielen guten seit leider endlich
    le la les une et est sont que qui vous nous il elle ils elles dans pour avec sur au aux du ce
    cette ces mais où très tres merci bonjour depuis rue notre nos votre vos mon ma mes leur leurs
    fait jours jour semaine semaines mois aussi toujours déchets dechets poubelle poubelles quartier
    voisin voisins bruit cassé cassee logement pourquoi quand rien peut pouvez pourriez faire été
    avons avez ai suis sommes c'est j'ai n'est depuis mairie
    el los las una y es está están estan hay por para con del al lo muy pero como desde hace días
    semana semanas gracias hola favor nuestra nuestro nuestros calle basura vecinos ruido
    ayuntamiento también tambien todavía todavia siempre nada nadie cuando donde dónde porque qué
    su sus mis roto rota puede pueden tengo tenemos tiene estoy mucho mucha esto ese esa
    os um uma não nao em dos das muito mas há dias obrigado obrigada olá ola rua lixo vizinhos
    barulho câmara camara ainda sempre ninguém quando onde meu minha nossa nosso seu sua
    estão estao foi são sao tem temos pode podem você voce vocês voces
    il gli della delle degli che è non sono mio nostro nostra molto ma dopo giorni settimana grazie
    ciao buongiorno strada rifiuti spazzatura vicini rumore comune anche ancora niente nessuno dove
    perché perche può puo possono
        """.split()  # noqa: SIM905
) - {"per", "pas", "via", "den", "e", "as", "plus", "comment", "man", "je"}
# Words in two lists would score for both; keep each only where it is unambiguous.
_SHARED = (_DUTCH & _ENGLISH) | (_DUTCH & _TURKISH) | (_DUTCH & _POLISH) | (_ENGLISH & _TURKISH)
_SHARED |= (_ENGLISH & _POLISH) | (_TURKISH & _POLISH)
_OTHER -= _DUTCH | _ENGLISH | _TURKISH | _POLISH  # before the four lose their shared words
_DUTCH -= _SHARED
_ENGLISH -= _SHARED
_TURKISH -= _SHARED
_POLISH -= _SHARED
#: Letters only Turkish writes among these languages ("i̇" is a capital İ case-folded: i + dot).
_TURKISH_LETTERS = frozenset("ığş\u0307")
_POLISH_LETTERS = frozenset("ąęłńśźżć")
_ARABIC_LETTER = re.compile(r"[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")
_LATIN_LETTER = re.compile(r"[a-z\u00c0-\u024f\u1e00-\u1eff]")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_DUTCH_PATTERNS = (
    re.compile(r"ij"),
    re.compile(r"oe"),
    re.compile(r"sch"),
    re.compile(r"aa|ee|uu"),
    re.compile(r"(heid|lijk|tje|tjes|ing|en)$"),
)
#: Turkish's present continuous (-yor, "calismiyor", "yaniyor"), in texts typed with or without diacritics.
_TURKISH_PATTERNS = (re.compile(r"yor(um|uz|sun|lar)?$"),)
_ENGLISH_PATTERNS = (
    re.compile(r"th"),
    re.compile(r"^wh"),
    re.compile(r"(ing|ly|tion|ness|ed)$"),
    re.compile(r"[aeiou]y"),
)
#: Letters that Dutch and English texts use (with the accents Dutch writes: "één", "café", "geïnd").
_OWN_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz'éèëêïíìîóòöôúùüûáàäâç")
#: A text where at least this share of the words has other letters (ł, ş, ő, ñ ...) is another language.
_FOREIGN_WORDS = 0.2
#: A win needs at least this lead over the other language, relative to the winner's score.
_MARGIN = 0.25


def _strip_accents(word: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", word) if not unicodedata.combining(ch))


def detect_language(text: str) -> Language:
    """``"nl"``, ``"en"``, ``"tr"``, ``"pl"``, ``"ar"`` or ``"other"`` for a text (a report, a
    question, a conversation turn).

    Deterministic and cheap (microseconds per short text; a text in plain ASCII skips the Unicode
    work); never raises.
    """
    sample = text[:2000]
    plain = sample.isascii()
    lowered = sample.casefold() if plain else unicodedata.normalize("NFKC", sample).casefold()
    words = _WORD.findall(lowered)
    if not words:
        return "other"
    if not plain:
        letters = sum(map(len, words))
        if len(_ARABIC_LETTER.findall(lowered)) >= 0.5 * letters:
            return "ar"
        if len(_LATIN_LETTER.findall(lowered)) < 0.7 * letters:
            return "other"  # Cyrillic, Chinese, ...: none of the languages answered in
    nl = en = tr = pl = foreign = others = 0.0
    for word in words:
        scores = _word_scores(word)
        nl += scores[0]
        en += scores[1]
        tr += scores[2]
        pl += scores[3]
        foreign += scores[4]
        others += scores[5]
    ranked = sorted(((tr, "tr"), (pl, "pl"), (nl, "nl"), (en, "en"), (others, "other")), reverse=True)
    (best, language), (second, _) = ranked[0], ranked[1]
    if language in ("nl", "en") and foreign >= _FOREIGN_WORDS * len(words):
        return "other"  # Spanish, German, Hungarian ...: Latin script with letters of their own
    if best < 1.0 or best - second < _MARGIN * best:
        return "other"
    return language  # type: ignore[return-value]


@functools.lru_cache(maxsize=65_536)
def _word_scores(word: str) -> tuple[float, float, float, float, float, float]:
    """What one word adds for Dutch, English, Turkish and Polish, whether its letters belong to
    none of them, and what it adds for the other languages' frequent words. Remembered:
    residents' reports repeat their words ("de", "container", "straat"), and the patterns cost
    more than the sums (intake guesses on every signal it receives)."""
    if not word.isascii():
        # A word with a letter of Turkish's or Polish's own is not Dutch or English either.
        if not _TURKISH_LETTERS.isdisjoint(word):
            return (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
        if not _POLISH_LETTERS.isdisjoint(word):
            return (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    foreign = 0.0 if word.isascii() or _OWN_LETTERS.issuperset(word) else 1.0
    if word in _TURKISH:
        return (0.0, 0.0, 1.0, 0.0, foreign, 0.0)
    if word in _POLISH:
        return (0.0, 0.0, 0.0, 1.0, foreign, 0.0)
    if word in _OTHER:
        return (0.0, 0.0, 0.0, 0.0, foreign, 1.0)
    bare = word if word.isascii() else _strip_accents(word)
    if bare in _DUTCH:
        return (1.0, 0.0, 0.0, 0.0, foreign, 0.0)
    if bare in _ENGLISH:
        return (0.0, 1.0, 0.0, 0.0, foreign, 0.0)
    return (
        0.5 * sum(1 for p in _DUTCH_PATTERNS if p.search(bare)),
        0.5 * sum(1 for p in _ENGLISH_PATTERNS if p.search(bare)),
        float(sum(1 for p in _TURKISH_PATTERNS if p.search(bare))),
        0.0,
        foreign,
        0.0,
    )


def guess_language(text: str) -> Language | None:
    """:func:`detect_language`, with ``None`` for ``"other"``: intake records a signal's language
    only when it knows it (``language`` of ``signal.received``, "when known"), and the classifier
    then says ``"other"`` itself."""
    language = detect_language(text)
    return None if language == "other" else language
