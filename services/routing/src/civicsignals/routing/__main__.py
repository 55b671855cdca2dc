from civicsignals.routing.cli import main

main()
