from civicsignals.intake.cli import main

main()
