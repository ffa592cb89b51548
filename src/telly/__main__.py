from telly.forkserver import main

main()
