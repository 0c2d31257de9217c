"""quicserve QUIC interop endpoint and native interop suite (see run.py)."""
