from activecrl.cli.app import main

main()
