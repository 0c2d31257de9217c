# quicserve developer entry points.  Every target works on a fresh Debian 12
# machine (as root, or with password-less sudo for the packages).
#
#   make serve    the demo app on https://127.0.0.1:8443 (TCP) and udp/8443 (HTTP/3)
#   make test     the whole test suite (what .ci/run runs)
#   make bench    the benchmarks (not part of make test)
#   make interop  the native QUIC interop suite
#   make lint     mypy --strict over quicserve/

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install
CERT   := certs/cert.pem
PYTEST_FLAGS ?= -q -p no:cacheprovider --timeout=300 -ra

# BINARY:PACKAGE pairs installed by `make deps` when the binary is missing.
TEST_PACKAGES := curl:curl gtlsclient:ngtcp2-client gtlsserver:ngtcp2-server \
                 h2load:nghttp2-client wrk:wrk chromium:chromium ip:iproute2
PYTHON_PACKAGES := python3:python3 py:ensurepip=python3-venv

.PHONY: venv certs deps serve test bench interop lint clean

venv: $(STAMP)

# The stamp makes a second `make venv` a no-op until pyproject.toml changes.
$(STAMP): pyproject.toml
	@.ci/ensure-packages $(PYTHON_PACKAGES)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[fast,test,bench,reload]'
	@touch $@

certs: $(CERT)

$(CERT): | $(STAMP)
	$(VPY) certs/generate.py

deps:
	@.ci/ensure-packages $(TEST_PACKAGES)

serve: venv certs
	$(VENV)/bin/quicserve --bind 127.0.0.1:8443 --quic-bind 127.0.0.1:8443 \
	    --certfile certs/cert.pem --keyfile certs/key.pem

test: venv certs deps
	QUICSERVE_REQUIRE_TOOLS=1 $(VPY) -m pytest $(PYTEST_FLAGS)

bench: venv certs deps
	$(VPY) bench/run.py

interop: venv certs deps
	@if [ -f interop/run.py ]; then $(VPY) interop/run.py; \
	else echo "interop/run.py is not in this tree yet"; fi

lint: venv
	$(VPY) -m mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
