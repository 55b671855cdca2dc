from civicsignals.notifier.cli import main

main()
