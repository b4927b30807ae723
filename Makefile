# Set-up and checks. `make demo` and `make test` work on a fresh Debian 12 machine:
# they install the system packages they need, then the package into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUNTIME := libpcap0.8 gcc python3-dev
APT_TEST := tshark
DEMO_CAPTURES := tests/data/dnscap-baseline-udp-82-msgs.pcap tests/data/suricata-tunnel-dns2tcp-txt-bug1158.pcap

.PHONY: demo test install system-deps system-deps-test build bench fuzz readme clean

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then \
		missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | $(SUDO) debconf-set-selections; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
endef

system-deps:
	$(call apt_install,$(APT_RUNTIME))

system-deps-test:
	$(call apt_install,$(APT_RUNTIME) $(APT_TEST))

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: system-deps $(PY)
	$(PY) -m pip install -q setuptools wheel "Cython>=3.0" "numpy>=1.26"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	$(PY) setup.py -q build_ext --inplace

build: $(PY)
	$(PY) setup.py -q build_ext --inplace

demo: install
	@echo "== dnssensor dump (first messages of $(word 1,$(DEMO_CAPTURES)))"
	@$(VENV)/bin/dnssensor dump $(word 1,$(DEMO_CAPTURES)) --format table | head -12
	@echo
	@echo "== a dns2tcp tunnel capture, as JSON (one message)"
	@$(VENV)/bin/dnssensor dump $(word 2,$(DEMO_CAPTURES)) | sed -n 3p
	@echo
	@echo "== summary of both captures"
	@$(VENV)/bin/dnssensor dump $(DEMO_CAPTURES) --summary > /dev/null
	@echo
	@echo "More: $(VENV)/bin/dnssensor dump FILE... [--format jsonl|table] [--port N]"

test: system-deps-test install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/parse.py

fuzz: install
	$(PY) -m pip install -q atheris
	$(PY) fuzz/fuzz_parse.py -atheris_runs=200000 fuzz/corpus

readme: build
	$(PY) tools/gen_field_reference.py --write

clean:
	rm -rf build $(VENV) sensor/*.so ext/*.c .hypothesis
