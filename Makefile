# Skiff: the two commands a new user needs are `make run` and `make test`.
# Both set everything up from nothing (system packages, virtual environment,
# the native engine) and are safe to run again.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := libssl-dev pkg-config cmake gcc curl openssl
JOBS ?= 2

.PHONY: run test deps venv native-test native-test-asan native-test-tsan lint pytest bench-micro clean

run: $(STAMP)
	$(VENV)/bin/skiffd $(ARGS)

test: $(STAMP) native-test native-test-asan native-test-tsan lint pytest

# System packages: the OpenSSL headers (the engine and proton's SSL support),
# pkg-config, cmake, and the programs the system tests drive.
deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml setup.py native/build_cffi.py $(wildcard native/src/*.c native/src/*.h native/include/*.h)
	$(MAKE) deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import router._native, proton; assert proton.SSL.present(), 'proton was built without SSL'"
	touch $(STAMP)

venv: $(STAMP)

native-test:
	cmake -S . -B build/plain -DSKIFF_SANITIZE= >/dev/null
	cmake --build build/plain -j$(JOBS)
	cd build/plain && ctest --output-on-failure

native-test-asan:
	cmake -S . -B build/asan -DSKIFF_SANITIZE=address >/dev/null
	cmake --build build/asan -j$(JOBS)
	cd build/asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure

native-test-tsan:
	cmake -S . -B build/tsan -DSKIFF_SANITIZE=thread >/dev/null
	cmake --build build/tsan -j$(JOBS)
	cd build/tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure

lint: $(STAMP)
	$(VENV)/bin/ruff check router adaptors bench tests
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# Micro-benchmarks of the calls the control plane makes into the engine
# (not part of the test suite).
bench-micro: $(STAMP)
	$(PY) -m pytest -q bench/micro --benchmark-only -p no:cacheprovider

clean:
	rm -rf build $(VENV) router/_native*.so router/_native.c *.egg-info
