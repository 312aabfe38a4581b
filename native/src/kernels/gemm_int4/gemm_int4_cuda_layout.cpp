// Host side of the CUDA INT4 layout (see gemm_int4_cuda_layout.hpp): building the device image from a
// canonical weight and inverting it. Plain C++ on purpose: it runs in every build, so the CPU test suite
// checks the exact bytes the kernel will read.
//
// Act-order (g_idx): rows are sorted by group at pack time, so the kernel sees an ordinary grouped
// weight and only the activations need a gather (a small permute kernel, gemm_int4.cu). GPTQ's desc_act
// gives every group exactly group_size rows, which sorts into aligned groups with no padding. Arbitrary
// g_idx (uneven groups) is still exact: each group's rows are padded up to a multiple of group_size
// with rows that dequantize to 0 and gather a 0 activation (row_src = -1), and the group's scales are
// repeated for each of its group_size-row chunks.
#include "gemm_int4_cuda_layout.hpp"

#include "../../core/error.hpp"

#include <algorithm>

namespace llmn::int4cuda {

namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void set_nibble(std::vector<uint32_t>& words, int64_t word, int nibble, uint32_t v) {
    uint32_t& w = words[static_cast<size_t>(word)];
    w = (w & ~(0xfu << (4 * nibble))) | ((v & 0xfu) << (4 * nibble));
}

uint32_t get_nibble(const std::vector<uint32_t>& words, int64_t word, int nibble) {
    return (words[static_cast<size_t>(word)] >> (4 * nibble)) & 0xfu;
}

}  // namespace

TileConfig choose_tile(int m_blocks, int64_t n_pad) {
    // Small problems (one 16-row block): a 128x128 tile with 4 k groups, which keeps enough tiles to fill
    // every SM (partitioning matters more than mma density when the weights dominate the traffic).
    // Larger ones: 64-deep k tiles with the widest n tile that divides n_pad, so A is reused across
    // more columns. A 64-column tile is the fallback for n_pad not a multiple of 128.
    if (m_blocks <= 1) return n_pad % 128 == 0 ? TileConfig{1, 8, 8} : TileConfig{1, 8, 4};
    if (n_pad % 256 == 0) return TileConfig{m_blocks, 4, 16};
    if (n_pad % 128 == 0) return TileConfig{m_blocks, 4, 8};
    return TileConfig{m_blocks, 8, 4};
}

Int4CudaImage build_image(const Int4Canonical& c) {
    LLMN_CHECK_ARG(c.k > 0 && c.n > 0, "int4 weight shape must be positive (k=%lld, n=%lld)", (long long)c.k,
                   (long long)c.n);
    LLMN_CHECK_ARG(c.group_size == 0 || c.group_size == 32 || c.group_size == 64 || c.group_size == 128,
                   "group_size must be 0, 32, 64 or 128 (got %d)", c.group_size);
    const int64_t groups = c.groups();
    LLMN_CHECK_ARG(int64_t(c.q.size()) == c.k * c.n && int64_t(c.scales.size()) == groups * c.n &&
                       int64_t(c.zeros.size()) == groups * c.n &&
                       (c.g_idx.empty() || int64_t(c.g_idx.size()) == c.k),
                   "inconsistent canonical int4 weight (k=%lld, n=%lld, groups=%lld)", (long long)c.k, (long long)c.n,
                   (long long)groups);

    Int4CudaImage im;
    im.k = c.k;
    im.n = c.n;
    im.group_size = c.group_size;
    im.symmetric = c.symmetric;
    im.groups = groups;
    im.g_idx = c.g_idx;
    im.n_pad = round_up(c.n, kPadN);

    // Virtual row order: vrow_src[v] = canonical row or -1, vgroup_src[vg] = canonical group or -1.
    std::vector<int32_t> vrow_src;
    std::vector<int32_t> vgroup_src;
    const int64_t gs = c.group_size;
    if (!c.g_idx.empty() && gs > 0) {
        std::vector<std::vector<int32_t>> members(static_cast<size_t>(groups));
        for (int64_t k = 0; k < c.k; ++k) {
            const int32_t g = c.g_idx[static_cast<size_t>(k)];
            LLMN_CHECK_ARG(g >= 0 && g < groups, "g_idx[%lld] = %d is outside [0, %lld)", (long long)k, g,
                           (long long)groups);
            members[static_cast<size_t>(g)].push_back(static_cast<int32_t>(k));
        }
        im.group_vrow.assign(static_cast<size_t>(groups), -1);
        for (int64_t g = 0; g < groups; ++g) {
            const auto& rows = members[static_cast<size_t>(g)];
            if (rows.empty()) {
                im.unused_scales.insert(im.unused_scales.end(), c.scales.begin() + g * c.n,
                                        c.scales.begin() + (g + 1) * c.n);
                im.unused_zeros.insert(im.unused_zeros.end(), c.zeros.begin() + g * c.n, c.zeros.begin() + (g + 1) * c.n);
                continue;
            }
            im.group_vrow[static_cast<size_t>(g)] = static_cast<int32_t>(vgroup_src.size());
            const int64_t chunks = (int64_t(rows.size()) + gs - 1) / gs;
            for (int64_t i = 0; i < chunks * gs; ++i)
                vrow_src.push_back(i < int64_t(rows.size()) ? rows[static_cast<size_t>(i)] : -1);
            for (int64_t i = 0; i < chunks; ++i) vgroup_src.push_back(static_cast<int32_t>(g));
        }
    } else {
        vrow_src.resize(static_cast<size_t>(c.k));
        for (int64_t k = 0; k < c.k; ++k) vrow_src[static_cast<size_t>(k)] = static_cast<int32_t>(k);
        for (int64_t g = 0; g < groups; ++g) vgroup_src.push_back(static_cast<int32_t>(g));
    }
    const int64_t k_virtual = int64_t(vrow_src.size());
    im.k_pad = round_up(k_virtual, kPadK);
    vrow_src.resize(static_cast<size_t>(im.k_pad), -1);
    im.groups_pad = gs > 0 ? im.k_pad / gs : 1;
    vgroup_src.resize(static_cast<size_t>(im.groups_pad), -1);

    bool identity = true;
    for (int64_t v = 0; v < im.k_pad && identity; ++v)
        identity = vrow_src[static_cast<size_t>(v)] == (v < c.k ? v : -1);
    if (!identity) im.row_src = vrow_src;

    // Scales and zero points per virtual group; groups that exist only as padding get scale 0, zero 8.
    im.scales.assign(static_cast<size_t>(im.groups_pad * im.n_pad), 0);
    if (!c.symmetric) im.zeros.assign(static_cast<size_t>(im.groups_pad * im.n_pad / 8), 0x88888888u);
    for (int64_t vg = 0; vg < im.groups_pad; ++vg) {
        const int32_t g = vgroup_src[static_cast<size_t>(vg)];
        for (int64_t n = 0; n < im.n_pad; ++n) {
            const bool real = g >= 0 && n < c.n;
            im.scales[static_cast<size_t>(scale_index(im.n_pad, vg, n))] =
                real ? c.scales[static_cast<size_t>(g * c.n + n)] : uint16_t(0);
            if (!c.symmetric)
                set_nibble(im.zeros, zero_word_index(im.n_pad, vg, n), zero_nibble(n),
                           real ? c.zeros[static_cast<size_t>(g * c.n + n)] : 8u);
        }
    }

    // Weights: padding rows and columns hold their group's zero point, so they dequantize to exactly 0.
    im.qweight.assign(static_cast<size_t>(im.k_pad * im.n_pad / 8), 0);
    for (int64_t v = 0; v < im.k_pad; ++v) {
        const int32_t src = vrow_src[static_cast<size_t>(v)];
        const int64_t vg = gs > 0 ? v / gs : 0;
        const int32_t g = vgroup_src[static_cast<size_t>(vg)];
        for (int64_t n = 0; n < im.n_pad; ++n) {
            uint32_t q;
            if (src >= 0 && n < c.n) q = c.q[static_cast<size_t>(int64_t(src) * c.n + n)];
            else if (g >= 0 && n < c.n) q = c.zeros[static_cast<size_t>(g * c.n + n)];
            else q = 8;
            const QPos p = q_position(im.n_pad, v, n);
            set_nibble(im.qweight, p.word, p.nibble, q);
        }
    }
    return im;
}

Int4Canonical unpack_image(const Int4CudaImage& im) {
    Int4Canonical c;
    c.k = im.k;
    c.n = im.n;
    c.group_size = im.group_size;
    c.symmetric = im.symmetric;
    c.g_idx = im.g_idx;
    const int64_t groups = c.groups();
    if (groups != im.groups) fail(LLMN_STATUS_INTERNAL, "int4 CUDA image: group count mismatch");
    c.q.assign(static_cast<size_t>(c.k * c.n), 0);
    c.scales.assign(static_cast<size_t>(groups * c.n), 0);
    c.zeros.assign(static_cast<size_t>(groups * c.n), 8);

    // Canonical row k lives at virtual row v where row_src[v] == k (identity when row_src is empty).
    for (int64_t v = 0; v < im.k_pad; ++v) {
        const int64_t src = im.row_src.empty() ? (v < im.k ? v : -1) : im.row_src[static_cast<size_t>(v)];
        if (src < 0) continue;
        for (int64_t n = 0; n < c.n; ++n) {
            const QPos p = q_position(im.n_pad, v, n);
            c.q[static_cast<size_t>(src * c.n + n)] = static_cast<uint8_t>(get_nibble(im.qweight, p.word, p.nibble));
        }
    }
    int64_t unused = 0;
    for (int64_t g = 0; g < groups; ++g) {
        int64_t vg = g;
        if (!im.group_vrow.empty()) {
            vg = im.group_vrow[static_cast<size_t>(g)];
            if (vg < 0) {
                std::copy(im.unused_scales.begin() + unused * c.n, im.unused_scales.begin() + (unused + 1) * c.n,
                          c.scales.begin() + g * c.n);
                std::copy(im.unused_zeros.begin() + unused * c.n, im.unused_zeros.begin() + (unused + 1) * c.n,
                          c.zeros.begin() + g * c.n);
                ++unused;
                continue;
            }
        }
        for (int64_t n = 0; n < c.n; ++n) {
            c.scales[static_cast<size_t>(g * c.n + n)] = im.scales[static_cast<size_t>(scale_index(im.n_pad, vg, n))];
            c.zeros[static_cast<size_t>(g * c.n + n)] =
                im.symmetric ? uint8_t(8)
                             : static_cast<uint8_t>(get_nibble(im.zeros, zero_word_index(im.n_pad, vg, n), zero_nibble(n)));
        }
    }
    return c;
}

}  // namespace llmn::int4cuda
