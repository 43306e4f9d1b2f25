# Entry points for people and CI. `make test` is what .ci/run calls.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test demo clean

all: build

deps:
	./scripts/install_deps.sh

configure: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

demo: build
	@echo "make demo: the end-to-end training demo arrives with the single-machine trainer (issue 3)."
	@echo "Until then, this built the library and its tests; run 'make test' to check them."

clean:
	rm -rf $(BUILD_DIR)
