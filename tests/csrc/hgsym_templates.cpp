// A C++ library built -O2 -g for the addr2line comparison (tests/test_native.py): small
// templates and lambdas that the optimizer inlines into their callers, so many addresses have
// inline chains two or three frames deep.
#include <cstddef>
#include <cstdint>

namespace hgsym {

template <typename T>
struct Accumulator {
    T total{};
    void add(T value) { total += scale(value); }
    static T scale(T value) { return value * 3 + 1; }
};

template <typename T, typename F>
T fold(const T *values, std::size_t n, F step) {
    Accumulator<T> acc;
    for (std::size_t i = 0; i < n; ++i) acc.add(step(values[i]));
    return acc.total;
}

template <typename T>
T mix(T a, T b) {
    return (a ^ (b << 7)) + (b >> 3);
}

// Kept out of line (a weak template symbol of its own) and called from several places.
template <typename T>
__attribute__((noinline)) T checksum(const T *values, std::size_t n) {
    T seed = fold(values, n, [](T v) { return mix<T>(v, v + 1); });
    return mix(seed, static_cast<T>(n));
}

}  // namespace hgsym

extern "C" {

std::uint64_t hgsym_checksum64(const std::uint64_t *values, std::size_t n) {
    return hgsym::checksum(values, n);
}

std::uint32_t hgsym_checksum32(const std::uint32_t *values, std::size_t n) {
    return hgsym::checksum(values, n);
}

long hgsym_fold_long(const long *values, std::size_t n) {
    return hgsym::fold(values, n, [](long v) { return v < 0 ? -v : v; });
}

int hgsym_mix_int(int a, int b) { return hgsym::mix(a, b) + hgsym::mix(b, a); }

std::uint64_t hgsym_checksum_both(const std::uint64_t *wide, const std::uint32_t *narrow, std::size_t n) {
    return hgsym::checksum(wide, n) + hgsym::checksum(narrow, n) + hgsym::fold(wide, n, [](std::uint64_t v) { return v >> 1; });
}

}
