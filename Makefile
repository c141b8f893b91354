# Two entry points for a fresh Debian 12 machine (as root):
#   make demo   - install what is missing, start OVS, run the lab demo on SQLite
#   make test   - install what is missing, start OVS, run the whole test suite
# Both are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PKGS := openvswitch-switch mininet ethtool tcpdump iputils-ping netcat-openbsd \
            postgresql python3-venv python3-pip iproute2 procps \
            traceroute busybox isc-dhcp-client frr bind9 bind9-dnsutils prometheus \
            chromium
STAMP_APT := $(VENV)/.apt-done
STAMP_PY  := $(VENV)/.py-done
# The lab tests run against the wheel, installed as users install it, in a fresh venv.
INSTALLED := .venv-installed

# Debian's mininet is only importable by /usr/bin/python3: expose just that package.
define expose_mininet
	@site=$$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  ln -sfn /usr/lib/python3/dist-packages/mininet $$site/mininet
endef

.PHONY: demo test deps ovs installed lint typecheck bench clean

demo: deps ovs
	$(BIN)/vfence lab

# unit + store tests on the editable install; lab tests (and the installed-package checks)
# on the wheel in $(INSTALLED), run from tests/ so the checkout is not importable.
test: deps ovs installed
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests/unit tests/store
	cd tests && VFENCE_INSTALLED=1 ../$(INSTALLED)/bin/python -m pytest -q -p no:cacheprovider \
	  --durations=15 --rootdir=.. -c ../pyproject.toml lab installed
	$(BIN)/ruff check controller apps mininet_topos tests bench migrations docs
	$(BIN)/mypy

deps: $(STAMP_APT) $(STAMP_PY)

$(STAMP_APT):
	@# "install ok installed": a removed-but-not-purged package still answers dpkg -s
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PY): pyproject.toml $(STAMP_APT)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(call expose_mininet,$(VENV))
	@touch $@

# A fresh venv every run: build the wheel, install it (not editable) with the lab extras.
installed: deps
	rm -rf build dist $(INSTALLED)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(PYTHON) -m venv $(INSTALLED)
	$(INSTALLED)/bin/pip install -q "$$(ls dist/vfence-*.whl)[lab]"
	$(call expose_mininet,$(INSTALLED))

OVS_CTL := /usr/share/openvswitch/scripts/ovs-ctl
# Start OVS if it is not answering (stale pid files from killed daemons are fine), wait
# for its database, and restart it once if it still does not answer.
ovs:
	@if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then \
	  echo ">> starting Open vSwitch"; \
	  $(OVS_CTL) start --system-id=random >/dev/null 2>&1 || true; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do \
	    ovs-vsctl --timeout=2 show >/dev/null 2>&1 && break; sleep 1; done; \
	  ovs-vsctl --timeout=2 show >/dev/null 2>&1 || { \
	    $(OVS_CTL) restart --system-id=random >/dev/null 2>&1 || true; sleep 2; }; \
	fi
	@ovs-vsctl --timeout=5 show >/dev/null

lint:
	$(BIN)/ruff check controller apps mininet_topos tests bench migrations docs

typecheck:
	$(BIN)/mypy

bench: deps ovs
	$(BIN)/python -m bench.program_switch
	$(BIN)/python -m bench.policy_scale
	$(BIN)/python -m bench.rule_change
	$(BIN)/python -m bench.migration
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.incremental
	$(BIN)/python -m bench.routing
	$(BIN)/python -m bench.external
	$(BIN)/python -m bench.dns
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.console

clean:
	rm -rf $(VENV) $(INSTALLED) build dist var
