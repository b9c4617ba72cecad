"""`python -m proconsul.agent.cli …` runs the `proconsul` command."""

from proconsul.agent.cli.main import main

if __name__ == "__main__":
    main()
