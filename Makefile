# Set-up and checks. `make demo` and `make test` work on a fresh Debian 12 machine:
# they install the system packages they need, then the package into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUNTIME := libpcap0.8 gcc python3-dev
APT_TEST := tshark unbound rsyslog rsyslog-gnutls openssl iproute2 iodine dns2tcp
DEMO_CAPTURES := tests/data/lab-resolver.pcap tests/data/demo-office-resolver.pcap
DNSSENSOR := $(VENV)/bin/dnssensor

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

# The compiled core is built profile-guided: once instrumented, trained on the captures in
# tests/data and on replays of generated resolver traffic (tools/pgo_train.py), then again
# from that profile.
define build_core
	rm -rf build/pgo
	DNSSENSOR_PGO=generate $(PY) setup.py -q build_ext --inplace --force
	$(PY) tools/pgo_train.py
	DNSSENSOR_PGO=use $(PY) setup.py -q build_ext --inplace --force
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
	$(build_core)

build: $(PY)
	$(build_core)

demo: install
	@rm -f demo.db demo.db-wal demo.db-shm
	@echo "== replay the sample captures through the whole engine into demo.db"
	@$(DNSSENSOR) replay --config deploy/demo.toml --db demo.db $(DEMO_CAPTURES)
	@echo
	@echo "== dnssensor status --db demo.db --minutes 15"
	@$(DNSSENSOR) status --db demo.db --minutes 15
	@echo
	@echo "== dnssensor verdicts --db demo.db"
	@$(DNSSENSOR) verdicts --db demo.db
	@echo
	@echo "== most seen answers and NXDOMAIN names (dnssensor query)"
	@$(DNSSENSOR) query --db demo.db "SELECT rrname, rrtype, rdata, count FROM pdns ORDER BY count DESC LIMIT 5"
	@$(DNSSENSOR) query --db demo.db "SELECT qname, count FROM pdns_nxdomain ORDER BY count DESC LIMIT 3"
	@echo
	@echo "== dnssensor pdns --db demo.db '*.corp.test'"
	@$(DNSSENSOR) pdns --db demo.db '*.corp.test' --limit 5
	@echo
	@echo "== the first tunnel verdict whole, with its evidence (dnssensor verdicts --id N)"
	@$(DNSSENSOR) verdicts --db demo.db --id $$($(DNSSENSOR) query --db demo.db --format csv \
		"SELECT id FROM verdicts WHERE kind = 'tunnel' ORDER BY first_ts LIMIT 1" | tail -n 1)
	@echo
	@echo "Go further:"
	@echo "  $(DNSSENSOR) pdns --db demo.db 10.77.0.80          # which names pointed at an address"
	@echo "  $(DNSSENSOR) pdns --db demo.db 10.77.0.0/16        # ... or into a network"
	@echo "  $(DNSSENSOR) verdicts --db demo.db --since 1h --format json"
	@echo "  $(DNSSENSOR) query --db demo.db \"SELECT minute, resolver, leg, queries, nxdomain, unanswered, mismatched FROM stats ORDER BY minute\""
	@echo "  $(DNSSENSOR) series queries --db demo.db --since 1h --png queries.png   # a counter against its baseline, drawn"
	@echo "  $(DNSSENSOR) dump $(word 1,$(DEMO_CAPTURES)) --format table | head"

test: system-deps-test install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/parse.py
	$(PY) bench/replay.py

fuzz: install
	$(PY) -m pip install -q atheris
	$(PY) fuzz/fuzz_parse.py -atheris_runs=200000 fuzz/corpus
	$(PY) fuzz/fuzz_frames.py -atheris_runs=100000 fuzz/corpus-frames

readme: build
	$(PY) tools/gen_field_reference.py --write

clean:
	rm -rf build $(VENV) sensor/*.so sensor/capture/*.so ext/*.c .hypothesis demo.db demo.db-wal demo.db-shm
