from cogs.cli import main

main()
