#!/bin/sh
# Build (once) and install a *portable* llama-cpp-python: CPU features fixed to a baseline, never the build
# host's (`GGML_NATIVE=ON`, llama.cpp's default, picks e.g. the AMX kernels that segfault on some Xeons).
#
#   deploy/llama-wheel.sh PIP [VERSION]
#
# x86-64: x86-64-v3 (AVX, AVX2, FMA, F16C, BMI2; no AVX-512, no AMX) — every x86-64 server CPU since
#         Intel Haswell (2013) and AMD Zen; the model worker refuses older CPUs with a clear message.
# arm64:  armv8-a with no optional extensions — every 64-bit Arm server.
# CHAT_LLAMA_CMAKE_ARGS replaces these flags (e.g. to build for one known fleet).
#
# The wheel is kept in a cache folder keyed by (version, flags, Python, platform), so a wheel built with other
# flags is never reused, and pip's own wheel cache is bypassed (`--no-cache-dir`): pip keys that cache by
# version alone and would hand back a host-tuned wheel built earlier.
set -eu
PIP=$1
VERSION=${2:-0.3.36}
case "$(uname -m)" in
    x86_64|amd64)
        DEFAULT_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
    aarch64|arm64)
        DEFAULT_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a" ;;
    *)
        DEFAULT_ARGS="-DGGML_NATIVE=OFF" ;;
esac
ARGS="${CHAT_LLAMA_CMAKE_ARGS:-$DEFAULT_ARGS} -DGGML_CCACHE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
PY_TAG=$("$(dirname "$PIP")/python" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())')
KEY=$(printf '%s\n%s\n%s\n' "$VERSION" "$ARGS" "$PY_TAG" | sha256sum | cut -c1-16)
DIR="${CHAT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-service/wheels}/llama-cpp-python-$VERSION-$KEY"
if ! ls "$DIR"/llama_cpp_python-*.whl > /dev/null 2>&1; then
    echo "llama-wheel: compiling llama-cpp-python $VERSION (portable: $ARGS); a few minutes, once" >&2
    mkdir -p "$DIR.tmp"
    CMAKE_ARGS="$ARGS" FORCE_CMAKE=1 "$PIP" wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        --wheel-dir "$DIR.tmp" "llama-cpp-python==$VERSION"
    printf '%s\n' "$ARGS" > "$DIR.tmp/CMAKE_ARGS"
    rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
fi
"$PIP" install --quiet --no-deps --no-index --force-reinstall --find-links "$DIR" "llama-cpp-python==$VERSION"
