from civicsignals.classifier.cli import main

main()
