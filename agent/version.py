"""The version Proconsul reports (API `Config.Version`, `proconsul version`)."""

VERSION = "0.1.0"
# The Consul API version we speak, reported where clients look for Consul's.
CONSUL_COMPAT_VERSION = "1.17.0"
PROTOCOL = 2
