"""`python -m proconsul.connect.proxy -proxy-id ID` runs a sidecar proxy (same as `proconsul connect proxy`)."""

from proconsul.connect.proxy.cli import main

if __name__ == "__main__":
    main()
