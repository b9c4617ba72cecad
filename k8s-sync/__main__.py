"""`python -m proconsul.k8s_sync [flags]` runs the syncer (same as `proconsul k8s-sync`)."""

from proconsul.k8s_sync.cli import main

if __name__ == "__main__":
    main()
