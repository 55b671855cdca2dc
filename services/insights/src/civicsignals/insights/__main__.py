from civicsignals.insights.cli import main

main()
