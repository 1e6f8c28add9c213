#!/usr/bin/env bash
# Build Triton's openvino backend from source for the Triton 2.51 server bundled in the
# nvidia-pytriton wheel (which has only the python backend), against the headers and
# libraries of the `openvino` wheel in the current Python environment. Offline: the
# sources must already be on disk.
#
#   serve/deploy/build_openvino_backend.sh SRC OUT
#
# SRC holds the r24.10 branches (Triton 2.51) of triton-inference-server/{backend,common,
# core,openvino_backend} in folders of those names, and Tencent/rapidjson as rapidjson/.
# Writes OUT/openvino/libtriton_openvino.so next to links to the wheel's OpenVINO
# libraries; serve it with TritonServer(extra_backends=[OUT/openvino]) or run
# OFASERVE_OPENVINO_BACKEND=OUT/openvino pytest tests/test_triton_backend_rules.py.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 SRC OUT (SRC: backend/ common/ core/ openvino_backend/ rapidjson/)" >&2
    exit 2
fi
SRC=$(realpath "$1")
OUT=$(realpath -m "$2")/openvino
for d in backend common core openvino_backend rapidjson; do
    [ -d "$SRC/$d" ] || { echo "error: $SRC/$d is missing" >&2; exit 2; }
done
OV=$(${PYTHON:-python} -c 'import openvino, os; print(os.path.dirname(openvino.__file__))')
LIBOV=$(ls "$OV"/libs/libopenvino.so.* | head -1)
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

cp -r "$SRC/openvino_backend/src" "$BUILD/src"
# OpenVINO 2025+ removed ov::element::undefined, which r24.10 still names; ov::element::dynamic
# replaces it, so the switch in openvino_utils.cc then lists that case twice: drop the first.
sed -i 's/ov::element::undefined/ov::element::dynamic/g' "$BUILD"/src/*.cc
sed -i '0,/case ov::element::dynamic:/{//d}' "$BUILD/src/openvino_utils.cc"

FLAGS=(-std=c++17 -O2 -fPIC -DTRITON_ENABLE_STATS=1 -D_GLIBCXX_USE_CXX11_ABI=1
       -I"$SRC/core/include" -I"$SRC/backend/include" -I"$SRC/common/include"
       -I"$SRC/rapidjson/include" -I"$OV/include" -I"$BUILD/src")
SOURCES=("$SRC"/common/src/{async_work_queue,thread_pool,error}.cc
         "$SRC"/backend/src/backend_{common,input_collector,memory,model,model_instance,output_responder}.cc
         "$BUILD"/src/openvino_utils.cc "$BUILD"/src/openvino.cc)
for f in "${SOURCES[@]}"; do
    echo "compiling ${f#"$SRC"/}"
    g++ "${FLAGS[@]}" -c "$f" -o "$BUILD/$(basename "$f" .cc).o"
done
mkdir -p "$OUT"
g++ -shared -o "$OUT/libtriton_openvino.so" "$BUILD"/*.o "$LIBOV" -lpthread \
    -Wl,--version-script="$SRC/openvino_backend/src/libtriton_openvino.ldscript" -Wl,-rpath,'$ORIGIN'
# libopenvino finds its plugins and frontends next to itself
for lib in "$OV"/libs/*; do ln -sf "$lib" "$OUT/"; done
echo "wrote $OUT/libtriton_openvino.so"
