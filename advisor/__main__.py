from advisor.cli.app import main

main()
