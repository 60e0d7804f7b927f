from mlan.cli import main

main()
