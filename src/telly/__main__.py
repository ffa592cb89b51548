from telly.cli import main

main()
