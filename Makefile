# Set-up and everyday commands. `make test` and `make demo` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# AUTO: build the CUDA kernels when torch has CUDA and nvcc is found; ON: fail if they cannot be built.
RWKV_VISION_WITH_CUDA ?= AUTO
RWKV_VISION_CUDA_ARCHITECTURES ?= 90
# ON: also build the CUDA kernels that have not run on a GPU yet (split, chunked; docs/ops.md).
RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS ?= OFF
export RWKV_VISION_WITH_CUDA RWKV_VISION_CUDA_ARCHITECTURES RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS

.PHONY: venv install lint format test test-cuda dist-check bench demo toy-model ablations clean

$(VENV)/.deps-stamp:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q "scikit-build-core>=0.10" ninja "cmake>=3.26" pytest hypothesis expecttest \
		numpy safetensors huggingface_hub timm pillow pyrwkv-tokenizer
	# test-only: the CLIP key converter and the preprocessing are checked against transformers;
	# matplotlib draws the ablation and benchmark plots (and their tests)
	$(PIP) install -q transformers matplotlib segment-anything==1.0
	# test-only: an independent oracle for RWKV-7 (x070) logits, the PyPI package of the official runtime
	$(PIP) install -q rwkv==0.8.32
	# lint and format check (configured in pyproject.toml); `build` makes the sdist and wheel (dist-check)
	$(PIP) install -q "ruff>=0.6" build
	touch $@

venv: $(VENV)/.deps-stamp

# The build is an error, never a silent fallback to the pure-PyTorch path.
install: venv
	$(PIP) install -q --no-build-isolation --no-deps -e . \
		-Ccmake.define.RWKV_VISION_WITH_CUDA=$(RWKV_VISION_WITH_CUDA) \
		-Ccmake.define.RWKV_VISION_CUDA_ARCHITECTURES="$(RWKV_VISION_CUDA_ARCHITECTURES)" \
		-Ccmake.define.RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=$(RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS)
	RWKV_VISION_REQUIRE_EXTENSION=1 $(PY) -c "import rwkv_vision, json; print(json.dumps(rwkv_vision.ops.backend_info()))"

LINT_PATHS := src tests examples benchmarks

# ruff: lint (pyflakes, pycodestyle, imports, bugbear, pyupgrade) and the format check; `make format` fixes.
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: venv
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: lint install
	RWKV_VISION_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -m "not cuda" tests

test-cuda: install
	RWKV_VISION_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -m cuda tests

# Installing without make: build the sdist and, from it, the wheel with `python -m build` (CPU kernels only,
# and --no-isolation: the build uses this venv's torch, so no CUDA torch is downloaded into a build
# environment), install the wheel into a fresh venv that borrows only torch & co from this one (a .pth
# line), and import it from outside the tree: kernels loaded, a packed wkv6 and a model forward run.
DIST_VENV := build/dist-check-venv
dist-check: venv
	rm -rf dist $(DIST_VENV)
	$(VENV)/bin/python -c "import build" 2>/dev/null || $(PIP) install -q build
	RWKV_VISION_WITH_CUDA=OFF RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=OFF $(PY) -m build --no-isolation --outdir dist .
	tar -tzf dist/rwkv_vision-*.tar.gz | grep -q "csrc/wkv6_cpu.cpp"
	$(PY) -m venv $(DIST_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(DIST_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_dev_venv_deps.pth"
	$(DIST_VENV)/bin/python -m pip install -q --no-deps --no-index dist/rwkv_vision-*.whl
	cd / && RWKV_VISION_REQUIRE_EXTENSION=1 $(abspath $(DIST_VENV))/bin/python $(abspath .ci/dist_check.py) \
		$(abspath $(DIST_VENV))

demo: install
	$(PY) examples/demo.py

# Retrain the shipped toy model with the two recorded runs (docs/toy_model.md; ~45 min on 2 CPU cores).
TOY_OUT ?= src/rwkv_vision/pretrained/shapes-vqa-tiny
toy-model: install
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 examples/train_toy.py --out out/toy-stage1 --val-every 500
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 examples/train_toy.py --init-from out/toy-stage1 \
		--curriculum-fraction 0 --steps 5000 --lr 4e-4 --seed 1 --out $(TOY_OUT) --val-every 500
	$(PY) examples/evaluate_toy.py --model $(TOY_OUT) --size 1000

# Toy-scale ablations of scan, prompt layout and recurrence (docs/ablations.md; ~75 min on 2 CPU cores).
ablations: install
	$(PY) examples/ablations.py --jobs 2 --seeds 0 1 2 3 4 --steps 600

bench: install
	$(PY) benchmarks/wkv6.py

clean:
	rm -rf build dist src/*.egg-info
