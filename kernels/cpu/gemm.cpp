// Packed, cache-blocked SGEMM (GotoBLAS/BLIS loop structure) with a register-blocked micro-kernel per ISA:
// AVX-512, AVX2+FMA, AArch64 NEON, and a portable GCC-vector fallback. C is split into a few tiles that the
// pool's threads take in any order; each running tile packs its B blocks (and A, if transposed) into its own
// workspace slot. A row-major A is read in place by the micro-kernel, never packed.
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/error.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

// Packing loops copy or zero a few floats at a time; GCC would turn them into memcpy/memset calls whose
// call overhead exceeds the work, so packing functions opt out of that transformation.
#if defined(__GNUC__) && !defined(__clang__)
#define CAMRT_INLINE_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CAMRT_INLINE_LOOPS
#endif

namespace camrt {

namespace {

// ---- Vector abstraction: the micro-kernel only needs load/store/broadcast/fma/add/max/min. ----
// Explicit fma intrinsics keep the FMA whatever -ffp-contract says (and keep the kernels readable).
// Register budget sets MR x NR: MR * NV accumulators + NV B vectors + 1 broadcast must fit the register file.
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int kMR = 14, kNV = 2;  // 28 accumulators + 2 B + 1 A of 32 zmm registers
constexpr const char* kKernelName = "avx512 14x32";
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vset1(float x) { return _mm512_set1_ps(x); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
// The all-lanes masked forms: GCC 12's unmasked _mm512_max_ps/_mm512_min_ps trip -Wmaybe-uninitialized.
inline Vec vmax(Vec a, Vec b) { return _mm512_mask_max_ps(a, __mmask16(0xFFFF), a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm512_mask_min_ps(a, __mmask16(0xFFFF), a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int kMR = 6, kNV = 2;  // 12 accumulators + 2 B + 1 A of 16 ymm registers
constexpr const char* kKernelName = "avx2 6x16";
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vset1(float x) { return _mm256_set1_ps(x); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
#elif defined(__aarch64__) && defined(__ARM_NEON)
using Vec = float32x4_t;
constexpr int kLanes = 4;
constexpr int kMR = 8, kNV = 3;  // 24 accumulators + 3 B + 1 A of 32 q registers
constexpr const char* kKernelName = "neon 8x12";
inline Vec vzero() { return vdupq_n_f32(0.f); }
inline Vec vset1(float x) { return vdupq_n_f32(x); }
inline Vec vload(const float* p) { return vld1q_f32(p); }
inline void vstore(float* p, Vec v) { vst1q_f32(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return vfmaq_f32(c, a, b); }
inline Vec vadd(Vec a, Vec b) { return vaddq_f32(a, b); }
inline Vec vmul(Vec a, Vec b) { return vmulq_f32(a, b); }
inline Vec vmax(Vec a, Vec b) { return vmaxq_f32(a, b); }
inline Vec vmin(Vec a, Vec b) { return vminq_f32(a, b); }
#else
// Portable fallback (GCC/Clang vector extension; SSE2 on plain x86-64): 8 accumulators fit 16 xmm registers.
typedef float Vec __attribute__((vector_size(16)));
constexpr int kLanes = 4;
constexpr int kMR = 4, kNV = 2;
constexpr const char* kKernelName = "generic 4x8";
inline Vec vzero() { return Vec{0.f, 0.f, 0.f, 0.f}; }
inline Vec vset1(float x) { return Vec{x, x, x, x}; }
inline Vec vload(const float* p) { Vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }
inline Vec vadd(Vec a, Vec b) { return a + b; }
inline Vec vmul(Vec a, Vec b) { return a * b; }
inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }
inline Vec vmin(Vec a, Vec b) { return a < b ? a : b; }
#endif

constexpr int kNR = kNV * kLanes;
// Cache blocking. KC: a B micro-panel (KC x NR floats, 48 KiB with AVX-512) stays in L1 while the kernel walks
// the MR-row panels of an MC x KC block of A (in L2); NC bounds the packed B block (KC x NC, 768 KiB with
// AVX-512) so it stays in L2 too. Tuned on Zen 5 (48 KiB L1d, 1 MiB L2 per core): KC 256..512 and NC 512..2048
// were within measurement noise of each other except for K-heavy late layers, which prefer the larger KC
// (fewer passes over C). K is split into equal blocks of at most KC (see GemmArgs).
constexpr int64_t kKC = 384;
constexpr int64_t kMC = kMR * 10;
constexpr int64_t kNC = kNR * 16;
// Below this many flops a tile is not worth a thread hand-off (a parallel_for costs a few microseconds).
constexpr double kMinTaskFlops = 2.0e6;
constexpr int kMaxSlots = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

inline float apply_act(float x, const FusedActivation& act) {
  switch (act.kind) {
    case FusedActivation::kRelu: return x > 0.f ? x : 0.f;
    case FusedActivation::kClip: return std::min(std::max(x, act.min), act.max);
    default: return x;
  }
}

inline float finish_scalar(float x, int64_t i, int64_t j, const GemmEpilogue& e) {
  if (e.bias_row) x += e.bias_row[i];
  if (e.bias_col) x += e.bias_col[j];
  return apply_act(x, e.act);
}

// The micro-kernels and the tile store are templated on the rows R <= MR and vectors NV <= kNV of the tile they
// compute, so a ragged last panel costs only its own work: M = 64 is 4 x 14 + 8 rows, and N = 196 (14x14) is
// 6 x 32 + one 16-column vector instead of 7 x 32 columns.

// acc[0..R)[0..NV) = Ap (R rows of MR-row panels, packed k-major) * Bp (kc x NR, packed k-major).
template <int R, int NV>
inline void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, Vec (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  for (int64_t p = 0; p < kc; ++p) {
    Vec b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vload(bp + v * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const Vec a = vset1(ap[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(a, b[v], acc[i][v]);
    }
    ap += kMR;
    bp += kNR;
  }
}

// The same product with A read in place from R rows of a row-major matrix (row stride lda): no packing.
// With few output columns (late CNN layers) packing A would cost as much as the arithmetic, because each
// packed element is used only N / NR times; reading it in place costs nothing extra.
template <int R, int NV>
inline void micro_kernel_rows(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict bp,
                              Vec (&acc)[kMR][kNV]) {
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vzero();
  for (int64_t p = 0; p < kc; ++p) {
    Vec b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vload(bp + v * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const Vec av = vset1(a[i * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(av, b[v], acc[i][v]);
    }
    bp += kNR;
  }
}

// Calls f(std::integral_constant<int, n>) for a runtime 1 <= n <= N.
template <int N, typename F>
inline void with_constant(int n, F&& f) {
  if constexpr (N == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    if (n == N) f(std::integral_constant<int, N>{});
    else with_constant<N - 1>(n, f);
  }
}

// How the product of one k-block combines with C: the first block applies beta, later blocks add, and the
// last one applies bias and activation.
struct TileMode {
  float alpha;      // scales the product
  bool accumulate;  // C += acc (a k-block after the first)
  float beta;       // first block: C = acc + beta * C (beta == 0: C is not read)
  bool last;        // apply the epilogue
};

inline Vec finish_vec(Vec x, Vec bias, const FusedActivation& act, Vec lo, Vec hi) {
  x = vadd(x, bias);
  if (act.kind == FusedActivation::kRelu) x = vmax(x, vzero());
  else if (act.kind == FusedActivation::kClip) x = vmin(vmax(x, lo), hi);
  return x;
}

// Writes rows [0, R) x columns [0, nr) of acc to C at (i0, j0) according to mode; nr <= NV * kLanes.
template <int R, int NV>
void store_tile(const GemmOutput& out, int64_t i0, int64_t j0, int nr, Vec (&acc)[kMR][kNV], const TileMode& mode,
                const GemmEpilogue& epi) {
  const int64_t seg_j = j0 % out.seg_cols;
  if constexpr (NV == kNV) {
    if (nr == kNR && seg_j + kNR <= out.seg_cols) {
      // Fast path: full-width columns, contiguous in memory.
      float* base = out.c + i0 * out.ldc + (j0 / out.seg_cols) * out.seg_stride + seg_j;
      Vec bias_col[kNV];
      for (int v = 0; v < kNV; ++v)
        bias_col[v] = (mode.last && epi.bias_col) ? vload(epi.bias_col + j0 + v * kLanes) : vzero();
      const Vec lo = vset1(epi.act.min), hi = vset1(epi.act.max), beta = vset1(mode.beta);
      const Vec alpha = vset1(mode.alpha);
      const bool scale = mode.alpha != 1.f;
      for (int i = 0; i < R; ++i) {
        float* crow = base + i * out.ldc;
        const Vec brow = (mode.last && epi.bias_row) ? vset1(epi.bias_row[i0 + i]) : vzero();
        for (int v = 0; v < kNV; ++v) {
          Vec x = scale ? vmul(acc[i][v], alpha) : acc[i][v];
          if (mode.accumulate) x = vadd(x, vload(crow + v * kLanes));
          else if (mode.beta != 0.f) x = vfma(beta, vload(crow + v * kLanes), x);
          if (mode.last) x = finish_vec(x, vadd(brow, bias_col[v]), epi.act, lo, hi);
          vstore(crow + v * kLanes, x);
        }
      }
      return;
    }
  }
  // Ragged N edge, or a tile that straddles a segment boundary: go through a scratch tile.
  alignas(64) float tmp[R][kNR];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) vstore(&tmp[i][v * kLanes], acc[i][v]);
  int64_t col_offset[kNR];
  for (int jj = 0; jj < nr; ++jj) {
    const int64_t j = j0 + jj;
    col_offset[jj] = (j / out.seg_cols) * out.seg_stride + j % out.seg_cols;
  }
  for (int i = 0; i < R; ++i) {
    float* crow = out.c + (i0 + i) * out.ldc;
    for (int jj = 0; jj < nr; ++jj) {
      float x = mode.alpha * tmp[i][jj];
      float& cref = crow[col_offset[jj]];
      if (mode.accumulate) x += cref;
      else if (mode.beta != 0.f) x += mode.beta * cref;
      if (mode.last) x = finish_scalar(x, i0 + i, j0 + jj, epi);
      cref = x;
    }
  }
}

// Packs rows [i0, i0 + mc) x cols [k0, k0 + kc) of op(A) = a^T (a stored (K, M), row stride lda) into MR-row
// panels, k-major and zero-padded. Only transposed A is packed: a row-major A is read in place.
CAMRT_INLINE_LOOPS void pack_a_transposed(float* __restrict dst, const float* a, int64_t lda, int64_t i0, int64_t mc,
                                          int64_t k0, int64_t kc) {
  for (int64_t ip = 0; ip < mc; ip += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, mc - ip);
    float* d = dst + ip * kc;
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = a + (k0 + p) * lda + i0 + ip;
      float* dp = d + p * kMR;
      for (int64_t i = 0; i < mr; ++i) dp[i] = src[i];
      for (int64_t i = mr; i < kMR; ++i) dp[i] = 0.f;
    }
  }
}

// How a GEMM is cut into tiles and how much scratch each running tile needs. Computed identically by
// gemm_workspace_bytes and the driver, so the workspace a plan reserves is exactly what forward uses.
struct GemmPlan {
  int64_t grid_m = 1, grid_n = 1;  // tiles: M split evenly by rows, N evenly by NR-column panels
  int64_t tile_m = 0, tile_n = 0;  // the largest tile (rows, columns)
  int slots = 1;                   // tiles that may run at once = workspace slots
  size_t a_floats = 0, b_floats = 0;
  size_t bytes = 0;

  int64_t row_begin(int64_t i, int64_t m) const { return i * m / grid_m; }
  int64_t col_begin(int64_t j, int64_t n) const { return std::min(n, j * ceil_div(n, kNR) / grid_n * kNR); }
};

constexpr size_t kAlign = 64;

GemmPlan make_plan(int64_t m, int64_t n, int64_t k, int num_threads) {
  GemmPlan plan;
  const int threads = std::max(1, std::min(num_threads, kMaxSlots));
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int64_t max_tasks =
      threads == 1 ? 1 : std::max<int64_t>(1, std::min<int64_t>(2 * threads, int64_t(flops / kMinTaskFlops)));
  const int64_t panels_n = ceil_div(n, kNR);
  // Estimated makespan in cycles of the largest tile times the rounds of tiles per thread: compute at ~40
  // flops/cycle (partial column panels cost a full panel), plus packing B once per tile (~1 cycle per element:
  // im2col) and streaming A once per NC block.
  double best = 0;
  for (int64_t gm = 1; gm <= std::min(m, max_tasks); ++gm) {
    for (int64_t gn = 1; gm * gn <= max_tasks && gn <= panels_n; ++gn) {
      const int64_t rows = ceil_div(m, gm), cols = ceil_div(panels_n, gn) * kNR;
      const double tile = 2.0 * rows * cols * k / 40.0 + double(cols) * k + 0.25 * rows * k * ceil_div(cols, kNC);
      const int64_t tasks = gm * gn;
      const double makespan = double(ceil_div(tasks, threads)) * tile;
      // Ties (within 3%) go to more tiles: they balance better when another process steals a core.
      if (best == 0 || makespan < best * 0.97 || (makespan < best * 1.03 && tasks > plan.grid_m * plan.grid_n)) {
        best = makespan;
        plan.grid_m = gm;
        plan.grid_n = gn;
        plan.tile_m = rows;
        plan.tile_n = std::min(cols, round_up(n, kNR));
      }
    }
  }
  if (best == 0) {  // m or n is 0
    plan.tile_m = std::max<int64_t>(1, m);
    plan.tile_n = std::max<int64_t>(kNR, round_up(n, kNR));
  }
  const int64_t tasks = plan.grid_m * plan.grid_n;
  plan.slots = int(std::min<int64_t>(threads, tasks));
  const int64_t kc = std::max<int64_t>(1, std::min(k, kKC));
  plan.a_floats = size_t(std::min(round_up(plan.tile_m, kMR), kMC) * kc);  // transposed A only
  plan.b_floats = size_t(kc * std::min(plan.tile_n, kNC) + kNR);           // + the slack GemmBPacker promises
  plan.bytes = size_t(plan.slots) * ((plan.a_floats + plan.b_floats) * sizeof(float) + 2 * kAlign) + kAlign;
  return plan;
}

float* align_up(void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<float*>((v + kAlign - 1) & ~uintptr_t(kAlign - 1));
}

struct GemmArgs {
  const GemmOutput* out;
  const float* a;
  int64_t lda;
  bool trans_a;
  const GemmBPacker* b;
  int64_t m, n, k;
  float alpha, beta;
  const GemmEpilogue* epi;
  int64_t kc, mc;  // K and M block sizes: the K blocks and a tile's M blocks are evened out (576 = 2 x 288,
                   // not 256 + 256 + 64) so no block is a sliver that pays the per-block costs for little work
};

// One tile of C: rows [i_begin, i_end), columns [j_begin, j_end), using this slot's packing buffers.
void run_tile(const GemmArgs& g, int64_t i_begin, int64_t i_end, int64_t j_begin, int64_t j_end, float* abuf,
              float* bbuf) {
  for (int64_t jc = j_begin; jc < j_end; jc += kNC) {
    const int64_t nc = std::min(kNC, j_end - jc);
    for (int64_t pc = 0; pc < g.k; pc += g.kc) {
      const int64_t kc = std::min(g.kc, g.k - pc);
      g.b->pack(bbuf, pc, kc, jc, nc, kNR);
      const TileMode mode{g.alpha, pc > 0, g.beta, pc + kc == g.k};
      for (int64_t ic = i_begin; ic < i_end; ic += g.mc) {
        const int64_t mc = std::min(g.mc, i_end - ic);
        // Row-major A is read in place; transposed A is packed into MR-row panels first.
        if (g.trans_a) pack_a_transposed(abuf, g.a, g.lda, ic, mc, pc, kc);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const int nr = int(std::min<int64_t>(kNR, nc - jr));
          const float* bp = bbuf + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            with_constant<kMR>(int(std::min<int64_t>(kMR, mc - ir)), [&](auto rows) {
              with_constant<kNV>(int(ceil_div(nr, kLanes)), [&](auto vecs) {
                constexpr int R = decltype(rows)::value, NV = decltype(vecs)::value;
                Vec acc[kMR][kNV];
                if (g.trans_a) micro_kernel<R, NV>(kc, abuf + ir * kc, bp, acc);
                else micro_kernel_rows<R, NV>(kc, g.a + (ic + ir) * g.lda + pc, g.lda, bp, acc);
                store_tile<R, NV>(*g.out, ic + ir, jc + jr, nr, acc, mode, *g.epi);
              });
            });
          }
        }
      }
    }
  }
}

// K == 0: the product is empty, so C = act(beta * C + bias).
void gemm_empty_k(const GemmOutput& out, int64_t m, int64_t n, float beta, const GemmEpilogue& epi) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float& c = out.c[i * out.ldc + (j / out.seg_cols) * out.seg_stride + j % out.seg_cols];
      c = finish_scalar(beta == 0.f ? 0.f : beta * c, i, j, epi);
    }
}

// Few rows and B given as (N, K): each C element is a dot product of two contiguous rows, which reads B once
// without packing (a fully-connected layer at small batch is bound by reading its weights).
constexpr int64_t kSkinnyM = 8;

template <int M, int J>
void skinny_dot_block(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t j0,
                      int64_t k, float alpha, float beta, const GemmEpilogue& epi) {
  Vec acc[M][J];
  for (int i = 0; i < M; ++i)
    for (int jj = 0; jj < J; ++jj) acc[i][jj] = vzero();
  int64_t p = 0;
  for (; p + kLanes <= k; p += kLanes) {
    Vec bv[J];
    for (int jj = 0; jj < J; ++jj) bv[jj] = vload(b + (j0 + jj) * ldb + p);
    for (int i = 0; i < M; ++i) {
      const Vec av = vload(a + i * lda + p);
      for (int jj = 0; jj < J; ++jj) acc[i][jj] = vfma(av, bv[jj], acc[i][jj]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int jj = 0; jj < J; ++jj) {
      alignas(64) float lanes[kLanes];
      vstore(lanes, acc[i][jj]);
      float s = 0.f;
      for (int l = 0; l < kLanes; ++l) s += lanes[l];
      for (int64_t q = p; q < k; ++q) s += a[i * lda + q] * b[(j0 + jj) * ldb + q];
      float& cref = c[i * ldc + j0 + jj];
      const float x = alpha * s + (beta == 0.f ? 0.f : beta * cref);
      cref = finish_scalar(x, i, j0 + jj, epi);
    }
}

template <int M>
void skinny_dot(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t n,
                int64_t k, float alpha, float beta, const GemmEpilogue& epi, ThreadPool& pool) {
  // Several columns per step for small M keeps enough independent FMA chains in flight.
  constexpr int J = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  pool.parallel_for(ceil_div(n, J), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t j0 = q * J;
      if (j0 + J <= n) {
        skinny_dot_block<M, J>(c, ldc, a, lda, b, ldb, j0, k, alpha, beta, epi);
      } else {
        for (int64_t j = j0; j < n; ++j) skinny_dot_block<M, 1>(c, ldc, a, lda, b, ldb, j, k, alpha, beta, epi);
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * M)));
}

void skinny_gemm(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t m,
                 int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epi, ThreadPool& pool) {
  for (int64_t i0 = 0; i0 < m; i0 += kSkinnyM) {
    const int64_t rows = std::min(kSkinnyM, m - i0);
    GemmEpilogue e = epi;
    if (e.bias_row) e.bias_row += i0;
    float* ci = c + i0 * ldc;
    const float* ai = a + i0 * lda;
    switch (rows) {
      case 1: skinny_dot<1>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 2: skinny_dot<2>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 3: skinny_dot<3>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 4: skinny_dot<4>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 5: skinny_dot<5>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 6: skinny_dot<6>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      case 7: skinny_dot<7>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
      default: skinny_dot<8>(ci, ldc, ai, lda, b, ldb, n, k, alpha, beta, e, pool); break;
    }
  }
}

}  // namespace

namespace {

// Row-major B: copies each panel row in runs that do not cross a segment boundary; a run spanning the whole
// panel (the common case) is one fixed-width copy, which compiles to a few vector moves.
template <int NR>
CAMRT_INLINE_LOOPS void pack_b_rows(float* dst, const float* b, int64_t ldb, int64_t seg_cols, int64_t seg_stride,
                                    int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t runtime_nr = NR) {
  const int64_t nr = NR > 0 ? NR : runtime_nr;
  for (int64_t jp = 0; jp < nc; jp += nr) {
    float* d = dst + jp * kc;
    const int64_t w = std::min(nr, nc - jp);
    for (int64_t q = 0; q < w;) {
      const int64_t j = j0 + jp + q;
      const int64_t in_seg = j % seg_cols;
      const int64_t len = std::min(w - q, seg_cols - in_seg);
      const float* src = b + (j / seg_cols) * seg_stride + in_seg + k0 * ldb;
      if (NR > 0 && len == NR) {
        for (int64_t p = 0; p < kc; ++p) std::memcpy(d + p * NR, src + p * ldb, sizeof(float) * (NR > 0 ? NR : 1));
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          const float* __restrict s = src + p * ldb;
          float* __restrict dp = d + p * nr + q;
          for (int64_t t = 0; t < len; ++t) dp[t] = s[t];
        }
      }
      q += len;
    }
    if (w < nr)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t q = w; q < nr; ++q) d[p * nr + q] = 0.f;
  }
}

}  // namespace

CAMRT_INLINE_LOOPS void GemmMatrixB::pack(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                                          int64_t nr) const {
  if (!trans_) {
    if (nr == kNR) pack_b_rows<kNR>(dst, b_, ldb_, seg_cols_, seg_stride_, k0, kc, j0, nc);
    else pack_b_rows<0>(dst, b_, ldb_, seg_cols_, seg_stride_, k0, kc, j0, nc, nr);
    return;
  }
  // Transposed B (N, K): column j of op(B) is row j of b, contiguous in k.
  CAMRT_CHECK(seg_cols_ >= j0 + nc, "gemm: a transposed B cannot be segmented");
  for (int64_t jp = 0; jp < nc; jp += nr) {
    float* d = dst + jp * kc;
    const int64_t w = std::min(nr, nc - jp);
    for (int64_t q = 0; q < w; ++q) {
      const float* __restrict s = b_ + (j0 + jp + q) * ldb_ + k0;
      for (int64_t p = 0; p < kc; ++p) d[p * nr + q] = s[p];
    }
    if (w < nr)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t q = w; q < nr; ++q) d[p * nr + q] = 0.f;
  }
}

size_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_threads) {
  return make_plan(m, n, k, num_threads).bytes;
}

const char* gemm_kernel_name() { return kKernelName; }

void gemm_packed(const GemmOutput& c, const float* a, int64_t lda, bool trans_a, const GemmBPacker& b, int64_t m,
                 int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue, void* workspace,
                 size_t workspace_bytes, ThreadPool& pool) {
  CAMRT_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size m=" << m << " n=" << n << " k=" << k);
  CAMRT_CHECK(c.seg_cols > 0, "gemm: segment width must be positive");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    gemm_empty_k(c, m, n, beta, epilogue);
    return;
  }
  const GemmPlan plan = make_plan(m, n, k, pool.num_threads());
  std::vector<unsigned char> own;
  if (!workspace) {
    own.resize(plan.bytes);
    workspace = own.data();
    workspace_bytes = own.size();
  }
  CAMRT_CHECK(workspace_bytes >= plan.bytes,
              "gemm: workspace of " << workspace_bytes << " bytes, need " << plan.bytes << " (m=" << m << " n=" << n
                                    << " k=" << k << ")");
  const size_t slot_bytes = (plan.a_floats + plan.b_floats) * sizeof(float) + 2 * kAlign;
  unsigned char* base = reinterpret_cast<unsigned char*>(align_up(workspace));

  const int64_t kc = ceil_div(k, ceil_div(k, kKC));
  const int64_t tile_m = round_up(plan.tile_m, kMR);
  const int64_t mc = round_up(ceil_div(tile_m, ceil_div(tile_m, kMC)), kMR);
  const GemmArgs args{&c, a, lda, trans_a, &b, m, n, k, alpha, beta, &epilogue, kc, mc};
  // A chunk of tiles claims a free slot for its packing buffers; at most plan.slots chunks run at once.
  std::atomic<bool> busy[kMaxSlots];
  for (int s = 0; s < plan.slots; ++s) busy[s].store(false, std::memory_order_relaxed);
  const int64_t tasks = plan.grid_m * plan.grid_n;
  pool.parallel_for(tasks, [&](int64_t begin, int64_t end) {
    int slot = 0;
    for (;; slot = (slot + 1) % plan.slots) {
      bool expected = false;
      if (busy[slot].compare_exchange_strong(expected, true, std::memory_order_acquire)) break;
    }
    unsigned char* s = base + size_t(slot) * slot_bytes;
    float* abuf = align_up(s);
    float* bbuf = align_up(abuf + plan.a_floats);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ti = t / plan.grid_n, tj = t % plan.grid_n;
      run_tile(args, plan.row_begin(ti, m), plan.row_begin(ti + 1, m), plan.col_begin(tj, n), plan.col_begin(tj + 1, n),
               abuf, bbuf);
    }
    busy[slot].store(false, std::memory_order_release);
  });
}

void gemm(float* c, int64_t ldc, const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb,
          bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue,
          void* workspace, size_t workspace_bytes, ThreadPool& pool) {
  CAMRT_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative size m=" << m << " n=" << n << " k=" << k);
  if (m == 0 || n == 0) return;
  if (trans_b && !trans_a && m <= kSkinnyM && k > 0) {
    skinny_gemm(c, ldc, a, lda, b, ldb, m, n, k, alpha, beta, epilogue, pool);
    return;
  }
  const GemmMatrixB packer(b, ldb, trans_b);
  gemm_packed(GemmOutput{c, ldc}, a, lda, trans_a, packer, m, n, k, alpha, beta, epilogue, workspace,
              workspace_bytes, pool);
}

}  // namespace camrt
