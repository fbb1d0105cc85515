# The two commands a user needs: `make demo` and `make test`. Both install into .venv first
# when it is missing or out of date (the stamp depends on pyproject.toml).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: install demo test bench clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the pinned CPU build, so no dependency pulls a CUDA torch
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	# torchattacks (a cross-check for our attacks) declares torchvision, which would pull a CUDA torch
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trustdiff demo

test: $(STAMP) browser
	$(BIN)/python -m pytest

# the report's browser check wants a headless Chromium: Debian's, installed where this user can
# (root with apt); elsewhere the check is skipped and says so
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } ; } || \
	  echo "chromium not installed: the report's browser check will be skipped"

# ~60 min of training/sampling, then ~35 min of certification, ~90 min of DiffPure under adaptive
# attacks (both use the model the first writes; purification reuses certification's classifier),
# ~90 min of adversarial training on that model's samples, ~100 min of data watermarking at 32×32 and
# ≤ 90 min of text-to-image trigger watermarking
bench: $(STAMP)
	$(BIN)/python bench/train_digits.py
	$(BIN)/python bench/certify_digits.py --denoiser bench/results/train_digits/train/model
	$(BIN)/python bench/purify_digits.py --denoiser bench/results/train_digits/train/model
	$(BIN)/python bench/advtrain_digits.py --model bench/results/train_digits/train/model
	$(BIN)/python bench/watermark_digits.py
	$(BIN)/python bench/t2i_watermark_digits.py
	$(BIN)/python bench/scale_cpu.py

clean:
	rm -rf $(VENV) build src/*.egg-info
