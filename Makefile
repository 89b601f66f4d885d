# splittoken: make install | run | web | demo | test | bench | lint | fuzz
# A Python >= 3.12 is found by scripts/find_python.sh; override with `make PYTHON=/path/to/python3.12 …`.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Debian packages the tests and benchmarks drive for real.
SYSTEM_PACKAGES := redis-server redis-tools chromium chromium-driver wrk
SYSTEM_COMMANDS := redis-server redis-cli chromium chromedriver wrk
# panva's oidc-provider: the second, real authorization server of the end-to-end tests (Node.js >= 20, npm).
OIDC_PROVIDER := scripts/oidc_provider
OIDC_STAMP    := $(OIDC_PROVIDER)/node_modules/.installed-stamp

.PHONY: install install-system run web demo test fuzz bench lint clean

install: $(STAMP) $(OIDC_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || { py=$$(PYTHON="$(PYTHON)" sh scripts/find_python.sh) && "$$py" -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

$(OIDC_STAMP): $(OIDC_PROVIDER)/package.json $(OIDC_PROVIDER)/package-lock.json
	npm ci --prefix $(OIDC_PROVIDER) --no-audit --no-fund --loglevel=error
	@touch $@

# Installs the Debian packages that are missing (needs root, as on CI); does nothing when all are there.
install-system:
	@missing=""; set -- $(SYSTEM_COMMANDS); for p in $(SYSTEM_PACKAGES); do \
	    command -v "$$1" >/dev/null 2>&1 || missing="$$missing $$p"; shift; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# ARGS: more mitmproxy options, e.g. make run ARGS="--set splittoken_max_ttl=60"
run: install
	$(PY) scripts/demo_stack.py $(ARGS)

web: install
	$(PY) scripts/demo_stack.py --web $(ARGS)

demo: install
	$(PY) scripts/demo.py

test: install install-system
	$(PY) -m pytest -q

fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py

bench: install install-system
	$(PY) scripts/bench.py

lint: install
	$(PY) -m ruff check addons tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis $(OIDC_PROVIDER)/node_modules tests/spa/node_modules
