# kiwi-overlay: `make test` runs every test, `make demo` boots a QEMU client from NBD.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
DESTDIR ?=
buildroot ?= $(DESTDIR)
dracutdir ?= /usr/lib/dracut/modules.d

.PHONY: all deps venv test lint format install dracut-module deb kiwi-image clean demo bench

all: venv

# The Debian packages the tests, the demo and the benchmarks use (as root; once per checkout).
build/.deps-installed: .ci/install-deps
	bash .ci/install-deps
	mkdir -p build
	touch $@

deps: build/.deps-installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,kiwi]'
	touch $@

venv: $(VENV)/.installed

# pytest exits 5 when a marker selection (PYTEST_ARGS="-m ...") matches no test: not a failure.
test: deps venv
	$(PY) -m pytest -ra --durations=40 $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Installs the Debian packages (root), builds the guest initrd and root, boots scenario 1 in QEMU.
# DEMO_ARGS=--kiwi boots the KIWI image of docs/kiwi.md instead (make kiwi-image; built when missing).
demo: deps venv
	$(PY) -m tests.boot.demo $(DEMO_ARGS)

# Every benchmark (issues 9 and 16), written to BENCHMARKS.md, which records its wall time (meant to stay under 30 min;
# most of it QEMU TCG boots, whose pace the host CPU sets).
# Needs root and the Debian packages of .ci/install-deps (QEMU, dracut, nbd-server, nbd-client, dnsmasq).
# BENCH_ARGS=--quick: one boot per variant (a smoke run); --only SECTION...; see python -m benchmarks --help.
bench: deps venv $(VENV)/.bench-installed
	$(PY) -m benchmarks $(BENCH_ARGS)

# matplotlib for the boot timeline: only `make bench` needs it.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	touch $@

lint: deps venv
	$(PY) -m ruff check kiwi_overlay tests benchmarks
	$(PY) -m ruff format --check kiwi_overlay tests benchmarks
	$(PY) -m mypy kiwi_overlay benchmarks
	if [ -d dracut ] && [ -n "$$(find dracut -name '*.sh')" ]; then shellcheck $$(find dracut -name '*.sh'); fi
	shellcheck tests/boot/*.sh docs/kiwi/*/config.sh benchmarks/*.sh benchmarks/dracut/*/*.sh

format: venv
	$(PY) -m ruff format kiwi_overlay tests benchmarks
	$(PY) -m ruff check --fix kiwi_overlay tests benchmarks

# The dracut module, as KIWI installs its own: into $(buildroot)$(dracutdir), e.g. make install buildroot=/tmp/root
MODULE := dracut/modules.d/55kiwi-overlay
install:
	install -d -m 755 $(buildroot)$(dracutdir)/55kiwi-overlay
	install -m 755 $(MODULE)/*.sh $(buildroot)$(dracutdir)/55kiwi-overlay/

# Regenerate the committed module after changing kiwi_overlay/dracut/. It records no command: installed
# by `make install` or the Debian package, it finds /usr/bin/kiwi-overlay or /usr/local/bin/kiwi-overlay.
dracut-module: venv
	$(VENV)/bin/kiwi-overlay dracut-module --no-command --output $(MODULE)

# The Debian package, with Debian's tooling (dpkg-buildpackage, pybuild; packages in .ci/install-deps):
# build/deb/kiwi-overlay_VERSION_all.deb, checked by lintian. Built from a copy of the tree, so the
# checkout stays clean and dpkg-buildpackage's output lands next to the copy, in build/deb/.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_SOURCES = debian dracut kiwi_overlay pyproject.toml README.md Makefile
deb: deps
	rm -rf build/deb
	mkdir -p build/deb/kiwi-overlay-$(DEB_VERSION)
	cp -a $(DEB_SOURCES) build/deb/kiwi-overlay-$(DEB_VERSION)/
	find build/deb -name __pycache__ -prune -exec rm -rf {} +
	# Debian's python3 builds it, whatever python3 is first on the caller's PATH (pyenv, a venv).
	cd build/deb/kiwi-overlay-$(DEB_VERSION) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	lintian --fail-on error build/deb/kiwi-overlay_$(DEB_VERSION)_all.deb

# The KIS image of docs/kiwi/kis-debian13 (docs/kiwi.md), built with kiwi-ng from this checkout's .deb
# and Debian's archive of this machine's apt sources: about 5 min, cached in
# /var/cache/kiwi-overlay/kiwi (KIWI_OVERLAY_CACHE) by content (description, .deb, kiwi's version, archive).
kiwi-image: deb venv
	$(PY) -m tests.boot.kiwi_image --deb build/deb/kiwi-overlay_$(DEB_VERSION)_all.deb

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
