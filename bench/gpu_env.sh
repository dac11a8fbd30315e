# Sourced by the GPU scripts: packages the lent machine's image lacks (soundfile, soxr,
# cffi, pycparser, faiss-cpu) travel as wheels in .whl/ (see BENCHMARKS.md); $OUT is
# where results go.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 CDINO_NO_PROGRESS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
