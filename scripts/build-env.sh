# Sourced by scripts/demo and scripts/test: makes sure the build prerequisites exist.
# Pingora's zlib-ng dependency is built with cmake. When the system has none, cmake is taken
# from PyPI (a self-contained binary) and handed to the build through $CMAKE.
if ! command -v cmake >/dev/null 2>&1 && [ -z "${CMAKE:-}" ]; then
    if ! python3 -c "import cmake" >/dev/null 2>&1; then
        echo "build-env: cmake not found; installing it from PyPI (pip install cmake)" >&2
        python3 -m pip install -q cmake >&2
    fi
    CMAKE="$(python3 -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))')"
    export CMAKE
fi
