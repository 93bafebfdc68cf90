// CPU CAM kernels (see cam.h). Channel sums run over tiles of positions with double accumulators, so a
// task reads K contiguous runs and writes its tile once; per-channel quantities run one plane per task.
// Eigen-CAM's eigensolver is sequential per image with row-parallel inner loops, so its result does not
// depend on the thread count.
#include "kernels/cpu/cam.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "engine/error.h"

namespace camrt {

namespace {

// Below about this many element operations a chunk runs on the calling thread: waking the workers costs
// about 10 us, the time of ~32K simple fp operations.
constexpr int64_t kMinWork = int64_t(1) << 15;
// Positions per channel-sum task: 256 double accumulators (2 KB) stay in L1 while K rows stream past.
constexpr int64_t kTile = 256;

int64_t chunk_for(int64_t work_per_item) { return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_item)); }

void check_sizes(const char* what, int64_t B, int64_t K, int64_t h, int64_t w) {
  CAMRT_CHECK(B >= 0 && K >= 0 && h >= 0 && w >= 0,
              what << ": negative size (B=" << B << ", K=" << K << ", h=" << h << ", w=" << w << ")");
}

double sum_plane(const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

// cam[b, z] = sum_k term(b, k, z) for z in tiles. add(b, k, z0, n, acc) adds channel k's terms for positions
// z0 .. z0+n-1 into acc[0 .. n-1].
template <typename AddChannel>
void channel_sum(float* cam, int64_t B, int64_t K, int64_t Z, ThreadPool& pool, const AddChannel& add) {
  if (B == 0 || Z == 0) return;
  const int64_t tiles = (Z + kTile - 1) / kTile;
  pool.parallel_for(
      B * tiles,
      [&](int64_t t0, int64_t t1) {
        double acc[kTile];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t b = t / tiles, z0 = (t % tiles) * kTile, n = std::min(kTile, Z - z0);
          std::fill(acc, acc + n, 0.0);
          for (int64_t k = 0; k < K; ++k) add(b, k, z0, n, acc);
          float* out = cam + b * Z + z0;
          for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(acc[j]);
        }
      },
      chunk_for(K * kTile));
}

// The Grad-CAM++ / Smooth Grad-CAM++ term alpha * ReLU(d1) with alpha = d2 / (2 d2 + S d3 + 1e-6), and
// alpha = 0 where d2 == 0. For Grad-CAM++ d2 = G^2 in double, which is 0 exactly when G == 0 (the square of
// the smallest fp32 denormal is still a normal double), so this is the spec's "alpha = 0 where G == 0".
// Written as a select rather than an early return so the loops over a plane vectorize; the discarded
// quotient of a d2 == 0 lane may be NaN (S infinite), which the select drops.
inline double plus_plus_term(double S, double d1, double d2, double d3) {
  const double term = d2 / (2.0 * d2 + S * d3 + 1e-6) * std::max(d1, 0.0);
  return d2 != 0.0 ? term : 0.0;
}

// Weight of one channel plane (a, g: Z values) for a channel-weight variant.
double channel_weight(const float* a, const float* g, int64_t Z, GradCamVariant variant) {
  switch (variant) {
    case GradCamVariant::GradCam:
      return sum_plane(g, Z) / static_cast<double>(Z);
    case GradCamVariant::GradCamNeg:
      return -sum_plane(g, Z) / static_cast<double>(Z);
    case GradCamVariant::GradCamPlusPlus: {
      const double S = sum_plane(a, Z);
      double wk = 0.0;
      for (int64_t i = 0; i < Z; ++i) {
        const double gi = g[i], g2 = gi * gi;
        wk += plus_plus_term(S, gi, g2, g2 * gi);
      }
      return wk;
    }
    case GradCamVariant::XGradCam: {
      double ga = 0.0, s = 0.0;
      for (int64_t i = 0; i < Z; ++i) {
        ga += static_cast<double>(g[i]) * a[i];
        s += a[i];
      }
      return ga / (s + 1e-7);
    }
    default:
      CAMRT_FAIL("Grad-CAM variant " << static_cast<int>(variant) << " has no channel weights");
  }
}

// ---- bilinear resize: ATen's CPU upsample_bilinear2d index and lambda computation, in fp32 -------------

struct LinearTap {
  int64_t i0, i1;
  float l0, l1;
};

// ATen area_pixel_compute_scale with no explicit scale factor (opmath_t = float for float tensors).
float linear_scale(int64_t in_size, int64_t out_size, bool align_corners) {
  if (align_corners) return out_size > 1 ? static_cast<float>(in_size - 1) / static_cast<float>(out_size - 1) : 0.f;
  return static_cast<float>(in_size) / static_cast<float>(out_size);
}

// ATen compute_source_index_and_lambda. Half-pixel: src = scale * (dst + 0.5) - 0.5 is formed in double (ATen
// multiplies the float scale by the double dst + 0.5) and rounded to float; negative sources clamp to 0.
LinearTap linear_tap(int64_t dst, int64_t in_size, int64_t out_size, float scale, bool align_corners) {
  if (in_size == out_size) return {dst, dst, 1.f, 0.f};
  float real;
  if (align_corners) {
    real = scale * static_cast<float>(dst);
  } else {
    const double src = static_cast<double>(scale) * (static_cast<double>(dst) + 0.5) - 0.5;
    real = src < 0.0 ? 0.f : static_cast<float>(src);
  }
  LinearTap tap;
  tap.i0 = static_cast<int64_t>(real);
  tap.i1 = tap.i0 + (tap.i0 < in_size - 1 ? 1 : 0);
  tap.l1 = std::min(std::max(real - static_cast<float>(tap.i0), 0.f), 1.f);
  tap.l0 = 1.f - tap.l1;
  return tap;
}

// Output rows [r0, r1) of one plane. Same association as ATen: rows interpolated along w first, then along h.
void resize_rows(float* out, const float* in, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                 bool align_corners, int64_t r0, int64_t r1) {
  const float sh = linear_scale(in_h, out_h, align_corners), sw = linear_scale(in_w, out_w, align_corners);
  for (int64_t r = r0; r < r1; ++r) {
    const LinearTap th = linear_tap(r, in_h, out_h, sh, align_corners);
    const float* row0 = in + th.i0 * in_w;
    const float* row1 = in + th.i1 * in_w;
    float* o = out + r * out_w;
    for (int64_t c = 0; c < out_w; ++c) {
      const LinearTap tw = linear_tap(c, in_w, out_w, sw, align_corners);
      const float t0 = row0[tw.i0] * tw.l0 + row0[tw.i1] * tw.l1;
      const float t1 = row1[tw.i0] * tw.l0 + row1[tw.i1] * tw.l1;
      o[c] = t0 * th.l0 + t1 * th.l1;
    }
  }
}

// ---- Eigen-CAM: symmetric eigensolver -----------------------------------------------------------------
//
// Why this solver. We need the top eigenpair of a symmetric PSD Gram matrix of order n = min(K, Z), often
// 49..512, sometimes larger. Power iteration converges like (lambda2/lambda1)^iters, which stalls exactly
// when the top two singular values of the centred activations are close (common after centring), and cyclic
// Jacobi costs ~10 sweeps of 3n^3 flops, seconds at n = 512. So we use the LAPACK dsyevx recipe:
//   1. Householder reduction to tridiagonal T = Q^T C Q (4/3 n^3 flops, backward stable);
//   2. the largest eigenvalue of T by bisection on Sturm counts: it converges to ~eps*||T|| in ~55 halvings
//      whatever the gap, because it counts eigenvalues instead of iterating on vectors;
//   3. its eigenvector by inverse iteration on T - lambda I (tridiagonal LU with partial pivoting), which
//      amplifies the wanted direction by 1/|lambda - lambda1| ~ 1/(eps*||T||) per step, so 1-2 steps suffice
//      for any gap; with lambda1 ~= lambda2 it returns a unit vector of their joint eigenspace, which is the
//      best any method can do (the singular vector itself is ill-determined, error ~ eps*||T||/gap, and an
//      SVD routine would return an equally arbitrary member);
//   4. back-transformation v = Q x with the stored reflectors.
// Every step is a fixed sequence of operations, so the result is deterministic and independent of threads.

// Work layout of symmetric_top_eigenpair (doubles): d, e, beta, p, x, y (6n) + tridiagonal LU (5n).
constexpr int64_t kEigenWorkPerN = 11;

// Reduces symmetric a (n x n, full storage) to tridiagonal form in place: d = diagonal, e = sub-diagonal
// (e[0..n-2]); row k, columns k+1..n-1 of `a` then hold Householder vector v_k (H_k = I - beta_k v v^T acting
// on indices k+1..n-1; beta_k = 0: no reflection).
void tridiagonalize(double* a, int64_t n, double* d, double* e, double* beta, double* p, ThreadPool& pool) {
  for (int64_t k = 0; k + 2 < n; ++k) {
    const int64_t m = n - k - 1;
    double* v = a + k * n + k + 1;  // x = column k below the diagonal (= row k by symmetry), becomes v
    double sigma = 0.0;
    for (int64_t i = 1; i < m; ++i) sigma += v[i] * v[i];
    beta[k] = 0.0;
    if (sigma == 0.0) {  // already tridiagonal in this column
      e[k] = v[0];
      continue;
    }
    const double norm = std::sqrt(v[0] * v[0] + sigma);
    // H x = alpha e1 with alpha of the opposite sign to x0, so v0 = x0 - alpha never cancels.
    const double alpha = v[0] > 0.0 ? -norm : norm;
    v[0] -= alpha;
    const double bk = 2.0 / (v[0] * v[0] + sigma);
    beta[k] = bk;
    e[k] = alpha;
    double* S = a + (k + 1) * n + (k + 1);  // trailing m x m block, row stride n
    // p = beta S v
    pool.parallel_for(
        m,
        [=](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const double* row = S + i * n;
            double s = 0.0;
            for (int64_t j = 0; j < m; ++j) s += row[j] * v[j];
            p[i] = bk * s;
          }
        },
        chunk_for(m));
    // w = p - (beta/2)(p.v) v; then S -= v w^T + w v^T (the update keeps S exactly symmetric)
    double pv = 0.0;
    for (int64_t i = 0; i < m; ++i) pv += p[i] * v[i];
    const double half = 0.5 * bk * pv;
    for (int64_t i = 0; i < m; ++i) p[i] -= half * v[i];
    pool.parallel_for(
        m,
        [=](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            double* row = S + i * n;
            const double vi = v[i], wi = p[i];
            for (int64_t j = 0; j < m; ++j) row[j] -= vi * p[j] + wi * v[j];
          }
        },
        chunk_for(2 * m));
  }
  for (int64_t i = 0; i < n; ++i) d[i] = a[i * n + i];
  if (n >= 2) e[n - 2] = a[(n - 2) * n + (n - 1)];
}

// Number of eigenvalues of T (d, e) below x: negative pivots of the LDL^T of T - x I. Pivots smaller than
// pivmin are replaced by -pivmin (LAPACK dstebz's guard against division by zero).
int64_t sturm_count_below(const double* d, const double* e, int64_t n, double x, double pivmin) {
  int64_t count = 0;
  double q = d[0] - x;
  for (int64_t i = 0;;) {
    if (std::abs(q) < pivmin) q = -pivmin;
    if (q < 0.0) ++count;
    if (++i == n) break;
    q = d[i] - x - e[i - 1] * e[i - 1] / q;
  }
  return count;
}

double tridiagonal_top_eigenvalue(const double* d, const double* e, int64_t n, double tnorm) {
  double max_e2 = 0.0;
  for (int64_t i = 0; i + 1 < n; ++i) max_e2 = std::max(max_e2, e[i] * e[i]);
  const double pivmin = DBL_MIN * std::max(1.0, max_e2);
  // Gershgorin interval, padded as dstebz does so the ends strictly bracket every eigenvalue.
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < n; ++i) {
    const double r = (i > 0 ? std::abs(e[i - 1]) : 0.0) + (i + 1 < n ? std::abs(e[i]) : 0.0);
    lo = std::min(lo, d[i] - r);
    hi = std::max(hi, d[i] + r);
  }
  const double pad = 2.0 * DBL_EPSILON * tnorm + 2.0 * pivmin;
  lo -= pad;
  hi += pad;
  // Invariant: count_below(lo) <= n - 1 (the top eigenvalue is >= lo), count_below(hi) == n.
  // Stop at 2 eps ||T||: the accuracy Sturm counts can certify; about 55 halvings from Gershgorin.
  for (int iter = 0; iter < 4096; ++iter) {
    const double mid = 0.5 * (lo + hi);
    if (hi - lo <= 2.0 * DBL_EPSILON * tnorm + pivmin || mid <= lo || mid >= hi) break;
    if (sturm_count_below(d, e, n, mid, pivmin) == n)
      hi = mid;
    else
      lo = mid;
  }
  return 0.5 * (lo + hi);
}

// Solves (T - lambda I) y = b in place (b -> y) by Gaussian elimination with partial pivoting, pivots below
// tiny replaced by +-tiny (inverse iteration wants the near-singular solve, not an error).
// lu: 5n doubles (diag, first and second super-diagonal, multipliers, swap flags).
void tridiagonal_shifted_solve(double* b, const double* d, const double* e, int64_t n, double lambda, double tiny,
                               double* lu) {
  double* D = lu;
  double* U1 = D + n;
  double* U2 = U1 + n;
  double* mult = U2 + n;
  double* swapped = mult + n;
  for (int64_t i = 0; i < n; ++i) {
    D[i] = d[i] - lambda;
    U1[i] = i + 1 < n ? e[i] : 0.0;
    U2[i] = 0.0;
  }
  // Step i eliminates column i from row i+1. Row i holds (D[i], U1[i]) at columns i, i+1; row i+1 is still
  // original: (e[i], d[i+1] - lambda, e[i+1]) at columns i, i+1, i+2.
  for (int64_t i = 0; i + 1 < n; ++i) {
    const double sub = e[i];
    if (std::abs(sub) > std::abs(D[i])) {
      const double r_d = D[i], r_u1 = U1[i];                   // old row i moves down
      D[i] = sub;                                              // new pivot row = old row i+1
      U1[i] = D[i + 1];
      U2[i] = U1[i + 1];
      const double l = r_d / sub;
      mult[i] = l;
      swapped[i] = 1.0;
      D[i + 1] = r_u1 - l * U1[i];
      U1[i + 1] = 0.0 - l * U2[i];
    } else {
      double piv = D[i];
      if (std::abs(piv) < tiny) piv = D[i] = (piv < 0.0 ? -tiny : tiny);
      const double l = sub / piv;
      mult[i] = l;
      swapped[i] = 0.0;
      D[i + 1] -= l * U1[i];
      // U1[i+1] (= e[i+1]) loses l * U2[i], and U2[i] == 0 without a swap
    }
  }
  for (int64_t i = 0; i < n; ++i)
    if (std::abs(D[i]) < tiny) D[i] = D[i] < 0.0 ? -tiny : tiny;
  // forward: apply the row swaps and multipliers to b
  for (int64_t i = 0; i + 1 < n; ++i) {
    if (swapped[i] != 0.0) std::swap(b[i], b[i + 1]);
    b[i + 1] -= mult[i] * b[i];
  }
  // back substitution with the upper band (D, U1, U2)
  for (int64_t i = n - 1; i >= 0; --i) {
    double s = b[i];
    if (i + 1 < n) s -= U1[i] * b[i + 1];
    if (i + 2 < n) s -= U2[i] * b[i + 2];
    b[i] = s / D[i];
  }
}

// max_i |(T x - lambda x)_i|
double tridiagonal_residual(const double* x, const double* d, const double* e, int64_t n, double lambda) {
  double r = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double t = (d[i] - lambda) * x[i];
    if (i > 0) t += e[i - 1] * x[i - 1];
    if (i + 1 < n) t += e[i] * x[i + 1];
    r = std::max(r, std::abs(t));
  }
  return r;
}

bool normalize(double* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  if (!(s > 0.0) || !std::isfinite(s)) return false;
  const double inv = 1.0 / std::sqrt(s);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
  return true;
}

// Unit eigenvector x of T for the eigenvalue lambda by inverse iteration from fixed pseudo-random starts.
void tridiagonal_eigenvector(double* x, const double* d, const double* e, int64_t n, double lambda, double tnorm,
                             double* y, double* lu) {
  const double tiny = DBL_EPSILON * tnorm;
  // Converged when the residual is at the level of rounding in T (||T x - lambda x|| <= 10 n eps ||T||).
  const double target = 10.0 * static_cast<double>(n) * DBL_EPSILON * tnorm;
  double best = std::numeric_limits<double>::infinity();
  uint64_t state = 0x9E3779B97F4A7C15ull;  // fixed seed: deterministic output
  for (int start = 0; start < 3 && best > target; ++start) {
    // Start: values in [-1, 1) from a 64-bit LCG (Knuth MMIX constants). A random start has a non-negligible
    // component along the wanted vector; a different start is tried if the iteration does not converge.
    for (int64_t i = 0; i < n; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      y[i] = static_cast<double>(state >> 11) * (2.0 / 9007199254740992.0) - 1.0;
    }
    if (!normalize(y, n)) continue;
    for (int iter = 0; iter < 4; ++iter) {
      tridiagonal_shifted_solve(y, d, e, n, lambda, tiny, lu);
      if (!normalize(y, n)) break;
      const double r = tridiagonal_residual(y, d, e, n, lambda);
      if (r < best) {
        best = r;
        std::memcpy(x, y, static_cast<size_t>(n) * sizeof(double));
      }
      if (r <= target) break;
    }
  }
  CAMRT_CHECK(std::isfinite(best), "Eigen-CAM: inverse iteration failed on a " << n << " x " << n
                                                                               << " Gram matrix (non-finite values?)");
}

// ---- Eigen-CAM projection of one image -----------------------------------------------------------------

struct EigenSlot {
  int64_t n = 0;  // order of the Gram matrix, min(K, Z)
  size_t doubles = 0;
};

EigenSlot eigen_slot(int64_t K, int64_t Z) {
  EigenSlot s;
  s.n = std::min(K, Z);
  // R (K*Z centred values), Gram (n*n), solver work, eigenvector (n), channel sums (Z), cam in double (Z).
  s.doubles = static_cast<size_t>(K * Z + s.n * s.n + static_cast<int64_t>(symmetric_eigen_work_doubles(s.n)) +
                                  s.n + 2 * Z);
  return s;
}

void eigen_project_image(float* cam, const float* A, int64_t K, int64_t Z, double* slot, ThreadPool& pool) {
  const EigenSlot layout = eigen_slot(K, Z);
  const int64_t n = layout.n;
  const bool channels_small = K <= Z;
  const int64_t len = channels_small ? Z : K;  // length of each Gram row vector
  double* R = slot;                            // (n, len): C = R R^T
  double* C = R + K * Z;
  double* work = C + n * n;
  double* v = work + symmetric_eigen_work_doubles(n);
  double* chsum = v + n;
  double* camd = chsum + Z;
  // Centre each channel over positions; R = M^T (K, Z) when K <= Z, else R = M (Z, K).
  pool.parallel_for(
      K,
      [=](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const float* a = A + k * Z;
          const double mean = sum_plane(a, Z) / static_cast<double>(Z);
          if (channels_small) {
            for (int64_t z = 0; z < Z; ++z) R[k * Z + z] = a[z] - mean;
          } else {
            for (int64_t z = 0; z < Z; ++z) R[z * K + k] = a[z] - mean;
          }
        }
      },
      chunk_for(Z));
  // Upper triangle of the Gram matrix, then mirrored.
  pool.parallel_for(
      n,
      [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const double* ri = R + i * len;
          for (int64_t j = i; j < n; ++j) {
            const double* rj = R + j * len;
            double s = 0.0;
            for (int64_t t = 0; t < len; ++t) s += ri[t] * rj[t];
            C[i * n + j] = s;
          }
        }
      },
      chunk_for(n * len / 2));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) C[i * n + j] = C[j * n + i];
  const double lambda = symmetric_top_eigenpair(v, C, n, work, pool);
  if (channels_small) {
    // cam = M v: cam_z = sum_k R[k, z] v_k
    for (int64_t z = 0; z < Z; ++z) camd[z] = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const double vk = v[k];
      const double* r = R + k * Z;
      for (int64_t z = 0; z < Z; ++z) camd[z] += r[z] * vk;
    }
  } else {
    // v is the top eigenvector u of M M^T; M (M^T u / sigma) = sigma u with sigma = sqrt(lambda).
    const double sigma = std::sqrt(std::max(lambda, 0.0));
    for (int64_t z = 0; z < Z; ++z) camd[z] = sigma * v[z];
  }
  // Sign rule: flip if sum_z cam_z * sum_k A_kz < 0 (uncentred A, as the spec states).
  for (int64_t z = 0; z < Z; ++z) chsum[z] = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const float* a = A + k * Z;
    for (int64_t z = 0; z < Z; ++z) chsum[z] += a[z];
  }
  double s = 0.0;
  for (int64_t z = 0; z < Z; ++z) s += camd[z] * chsum[z];
  const double sign = s < 0.0 ? -1.0 : 1.0;
  for (int64_t z = 0; z < Z; ++z) cam[z] = static_cast<float>(sign * camd[z]);
}

}  // namespace

// ---- gradient-weighted methods ---------------------------------------------------------------------------

bool grad_cam_has_channel_weights(GradCamVariant variant) {
  return variant == GradCamVariant::GradCam || variant == GradCamVariant::GradCamNeg ||
         variant == GradCamVariant::GradCamPlusPlus || variant == GradCamVariant::XGradCam;
}

void grad_cam_channel_weights(float* weights, const float* A, const float* G, int64_t B, int64_t K, int64_t h,
                              int64_t w, GradCamVariant variant, ThreadPool& pool) {
  check_sizes("grad_cam_channel_weights", B, K, h, w);
  CAMRT_CHECK(grad_cam_has_channel_weights(variant),
              "grad_cam_channel_weights: variant " << static_cast<int>(variant) << " has no channel weights");
  const int64_t Z = h * w;
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) weights[p] = static_cast<float>(channel_weight(A + p * Z, G + p * Z, Z, variant));
      },
      chunk_for(4 * Z));
}

void weighted_channel_sum(float* cam, const float* weights, const float* A, int64_t B, int64_t K, int64_t h,
                          int64_t w, ThreadPool& pool) {
  check_sizes("weighted_channel_sum", B, K, h, w);
  const int64_t Z = h * w;
  channel_sum(cam, B, K, Z, pool, [=](int64_t b, int64_t k, int64_t z0, int64_t n, double* acc) {
    const double wk = weights[b * K + k];
    const float* a = A + (b * K + k) * Z + z0;
    for (int64_t j = 0; j < n; ++j) acc[j] += wk * a[j];
  });
}

void grad_cam_forward(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w,
                      GradCamVariant variant, ThreadPool& pool) {
  check_sizes("grad_cam_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (grad_cam_has_channel_weights(variant)) {
    std::vector<float> weights(static_cast<size_t>(B * K));
    grad_cam_channel_weights(weights.data(), A, G, B, K, h, w, variant, pool);
    weighted_channel_sum(cam, weights.data(), A, B, K, h, w, pool);
    return;
  }
  switch (variant) {
    case GradCamVariant::HiResCam:
      channel_sum(cam, B, K, Z, pool, [=](int64_t b, int64_t k, int64_t z0, int64_t n, double* acc) {
        const float* a = A + (b * K + k) * Z + z0;
        const float* g = G + (b * K + k) * Z + z0;
        for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<double>(g[j]) * a[j];
      });
      break;
    case GradCamVariant::GradCamElementwise:
      channel_sum(cam, B, K, Z, pool, [=](int64_t b, int64_t k, int64_t z0, int64_t n, double* acc) {
        const float* a = A + (b * K + k) * Z + z0;
        const float* g = G + (b * K + k) * Z + z0;
        for (int64_t j = 0; j < n; ++j) acc[j] += std::max(static_cast<double>(g[j]) * a[j], 0.0);
      });
      break;
    case GradCamVariant::LayerCam:
      channel_sum(cam, B, K, Z, pool, [=](int64_t b, int64_t k, int64_t z0, int64_t n, double* acc) {
        const float* a = A + (b * K + k) * Z + z0;
        const float* g = G + (b * K + k) * Z + z0;
        for (int64_t j = 0; j < n; ++j) acc[j] += std::max(static_cast<double>(g[j]), 0.0) * a[j];
      });
      break;
    default:
      CAMRT_FAIL("grad_cam_forward: unknown variant " << static_cast<int>(variant));
  }
}

void grad_cam_weighted_activations(float* out, const float* A, const float* G, int64_t B, int64_t K, int64_t h,
                                   int64_t w, GradCamVariant variant, ThreadPool& pool) {
  check_sizes("grad_cam_weighted_activations", B, K, h, w);
  const int64_t Z = h * w;
  const bool channel_weights = grad_cam_has_channel_weights(variant);
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const float* a = A + p * Z;
          const float* g = G + p * Z;
          float* o = out + p * Z;
          if (channel_weights) {
            // The weight rounded to fp32 first, as grad_cam_channel_weights + scale_channels would.
            const float wk = static_cast<float>(channel_weight(a, g, Z, variant));
            for (int64_t i = 0; i < Z; ++i) o[i] = wk * a[i];
            continue;
          }
          switch (variant) {
            case GradCamVariant::HiResCam:
              for (int64_t i = 0; i < Z; ++i) o[i] = g[i] * a[i];
              break;
            case GradCamVariant::GradCamElementwise:
              for (int64_t i = 0; i < Z; ++i) o[i] = std::max(g[i] * a[i], 0.f);
              break;
            case GradCamVariant::LayerCam:
              for (int64_t i = 0; i < Z; ++i) o[i] = std::max(g[i], 0.f) * a[i];
              break;
            default:
              CAMRT_FAIL("grad_cam_weighted_activations: unknown variant " << static_cast<int>(variant));
          }
        }
      },
      chunk_for(4 * Z));
}

void scale_channels(float* out, const float* A, const float* weights, int64_t B, int64_t K, int64_t h, int64_t w,
                    ThreadPool& pool) {
  check_sizes("scale_channels", B, K, h, w);
  const int64_t Z = h * w;
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const float wk = weights[p];
          for (int64_t i = 0; i < Z; ++i) out[p * Z + i] = wk * A[p * Z + i];
        }
      },
      chunk_for(Z));
}

void elementwise_product(float* out, const float* a, const float* b, int64_t n, ThreadPool& pool) {
  pool.parallel_for(
      n,
      [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] = a[i] * b[i];
      },
      kMinWork);
}

void smooth_gradcampp_accumulate(float* D1, float* D2, float* D3, const float* G, int64_t n, ThreadPool& pool) {
  pool.parallel_for(
      n,
      [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const double g = G[i], g2 = g * g;
          D1[i] = static_cast<float>(D1[i] + g);
          D2[i] = static_cast<float>(D2[i] + g2);
          D3[i] = static_cast<float>(D3[i] + g2 * g);
        }
      },
      kMinWork / 4);
}

void smooth_gradcampp_channel_weights(float* weights, const float* A, const float* D1, const float* D2,
                                      const float* D3, int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool) {
  check_sizes("smooth_gradcampp_channel_weights", B, K, h, w);
  const int64_t Z = h * w;
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const double S = sum_plane(A + p * Z, Z);
          const float* d1 = D1 + p * Z;
          const float* d2 = D2 + p * Z;
          const float* d3 = D3 + p * Z;
          double wk = 0.0;
          for (int64_t i = 0; i < Z; ++i) wk += plus_plus_term(S, d1[i], d2[i], d3[i]);
          weights[p] = static_cast<float>(wk);
        }
      },
      chunk_for(8 * Z));
}

void smooth_gradcampp_forward(float* cam, const float* A, const float* D1, const float* D2, const float* D3,
                              int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool) {
  check_sizes("smooth_gradcampp_forward", B, K, h, w);
  std::vector<float> weights(static_cast<size_t>(B * K));
  smooth_gradcampp_channel_weights(weights.data(), A, D1, D2, D3, B, K, h, w, pool);
  weighted_channel_sum(cam, weights.data(), A, B, K, h, w, pool);
}

void normgrad_forward(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w,
                      ThreadPool& pool) {
  check_sizes("normgrad_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (B == 0 || Z == 0) return;
  const int64_t tiles = (Z + kTile - 1) / kTile;
  pool.parallel_for(
      B * tiles,
      [=](int64_t t0, int64_t t1) {
        double ga[kTile], aa[kTile];
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t b = t / tiles, z0 = (t % tiles) * kTile, n = std::min(kTile, Z - z0);
          std::fill(ga, ga + n, 0.0);
          std::fill(aa, aa + n, 0.0);
          for (int64_t k = 0; k < K; ++k) {
            const float* a = A + (b * K + k) * Z + z0;
            const float* g = G + (b * K + k) * Z + z0;
            for (int64_t j = 0; j < n; ++j) {
              ga[j] += static_cast<double>(g[j]) * g[j];
              aa[j] += static_cast<double>(a[j]) * a[j];
            }
          }
          for (int64_t j = 0; j < n; ++j) cam[b * Z + z0 + j] = static_cast<float>(std::sqrt(ga[j]) * std::sqrt(aa[j]));
        }
      },
      chunk_for(2 * K * kTile));
}

// ---- Eigen-CAM -----------------------------------------------------------------------------------------

size_t symmetric_eigen_work_doubles(int64_t n) { return static_cast<size_t>(kEigenWorkPerN * std::max<int64_t>(n, 1)); }

double symmetric_top_eigenpair(double* v, double* a, int64_t n, double* work, ThreadPool& pool) {
  CAMRT_CHECK(n >= 1, "symmetric_top_eigenpair: empty matrix (n = " << n << ")");
  if (n == 1) {
    v[0] = 1.0;
    return a[0];
  }
  double* d = work;
  double* e = d + n;
  double* beta = e + n;
  double* p = beta + n;
  double* x = p + n;
  double* y = x + n;
  double* lu = y + n;  // 5n
  tridiagonalize(a, n, d, e, beta, p, pool);
  double tnorm = 0.0;  // ||T||_inf, the scale of every tolerance below
  for (int64_t i = 0; i < n; ++i)
    tnorm = std::max(tnorm, std::abs(d[i]) + (i > 0 ? std::abs(e[i - 1]) : 0.0) + (i + 1 < n ? std::abs(e[i]) : 0.0));
  CAMRT_CHECK(std::isfinite(tnorm), "symmetric_top_eigenpair: non-finite values in the " << n << " x " << n << " matrix");
  if (tnorm == 0.0) {  // zero matrix (e.g. every channel constant): any unit vector; take e_0
    std::fill(v, v + n, 0.0);
    v[0] = 1.0;
    return 0.0;
  }
  const double lambda = tridiagonal_top_eigenvalue(d, e, n, tnorm);
  tridiagonal_eigenvector(x, d, e, n, lambda, tnorm, y, lu);
  // v = Q x = H_0 H_1 ... H_{n-3} x: the last reflector first.
  for (int64_t k = n - 3; k >= 0; --k) {
    if (beta[k] == 0.0) continue;
    const double* hv = a + k * n + k + 1;
    double* xs = x + k + 1;
    const int64_t m = n - k - 1;
    double s = 0.0;
    for (int64_t i = 0; i < m; ++i) s += hv[i] * xs[i];
    s *= beta[k];
    for (int64_t i = 0; i < m; ++i) xs[i] -= s * hv[i];
  }
  normalize(x, n);
  std::memcpy(v, x, static_cast<size_t>(n) * sizeof(double));
  return lambda;
}

size_t eigen_cam_scratch_floats(int64_t K, int64_t h, int64_t w, int threads) {
  const EigenSlot slot = eigen_slot(K, h * w);
  // doubles -> floats, plus one float of slack to align a float pointer to 8 bytes
  return 2 * slot.doubles * static_cast<size_t>(std::max(threads, 1)) + 2;
}

void eigen_cam_forward(float* cam, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool,
                       float* scratch) {
  check_sizes("eigen_cam_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (B == 0 || Z == 0) return;
  CAMRT_CHECK(K >= 1, "eigen_cam_forward: no channels");
  std::vector<float> owned;
  if (scratch == nullptr) {
    owned.resize(eigen_cam_scratch_floats(K, h, w, pool.num_threads()));
    scratch = owned.data();
  }
  void* raw = scratch;
  size_t space = eigen_cam_scratch_floats(K, h, w, pool.num_threads()) * sizeof(float);
  double* base = static_cast<double*>(std::align(alignof(double), sizeof(double), raw, space));
  CAMRT_CHECK(base != nullptr, "eigen_cam_forward: scratch cannot be aligned");
  const size_t per_slot = eigen_slot(K, Z).doubles;
  // One slot per concurrently processed image. With one image (or one thread) the loop runs inline and the
  // Gram matrix and tridiagonalization use the pool instead.
  const int64_t slots = std::min<int64_t>(B, pool.num_threads());
  pool.parallel_for(
      slots,
      [=, &pool](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s)
          for (int64_t b = s; b < B; b += slots)
            eigen_project_image(cam + b * Z, A + b * K * Z, K, Z, base + static_cast<size_t>(s) * per_slot, pool);
      },
      1);
}

// ---- Score-CAM -------------------------------------------------------------------------------------------

void bilinear_resize(float* out, const float* in, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
                     int64_t out_w, bool align_corners, ThreadPool& pool) {
  CAMRT_CHECK(planes >= 0 && out_h >= 0 && out_w >= 0, "bilinear_resize: negative size");
  if (planes == 0 || out_h == 0 || out_w == 0) return;
  CAMRT_CHECK(in_h > 0 && in_w > 0, "bilinear_resize: empty input plane (" << in_h << " x " << in_w << ") resized to "
                                                                          << out_h << " x " << out_w);
  pool.parallel_for(
      planes * out_h,
      [=](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1;) {
          const int64_t p = r / out_h, row = r % out_h, end = std::min(r1 - r + row, out_h);
          resize_rows(out + p * out_h * out_w, in + p * in_h * in_w, in_h, in_w, out_h, out_w, align_corners, row, end);
          r += end - row;
        }
      },
      chunk_for(8 * out_w));
}

void scorecam_masks(float* masks, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                    ThreadPool& pool) {
  check_sizes("scorecam_masks", B, K, h, w);
  if (B * K == 0) return;
  CAMRT_CHECK(h > 0 && w > 0 && H > 0 && W > 0,
              "scorecam_masks: empty plane (" << h << " x " << w << " upsampled to " << H << " x " << W << ")");
  const int64_t HW = H * W;
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          float* m = masks + p * HW;
          resize_rows(m, A + p * h * w, h, w, H, W, /*align_corners=*/true, 0, H);
          float mn = m[0], mx = m[0];
          for (int64_t i = 1; i < HW; ++i) {
            mn = std::min(mn, m[i]);
            mx = std::max(mx, m[i]);
          }
          // fp32, as pytorch-grad-cam's torch expression (upsampled - mins) / (maxs - mins + 1e-8)
          const float denom = (mx - mn) + 1e-8f;
          for (int64_t i = 0; i < HW; ++i) m[i] = (m[i] - mn) / denom;
        }
      },
      1);
}

void apply_mask(float* out, const float* x, const float* masks, int64_t n, int64_t C, int64_t H, int64_t W,
                ThreadPool& pool) {
  const int64_t HW = H * W;
  pool.parallel_for(
      n * C,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const float* xc = x + (p % C) * HW;
          const float* m = masks + (p / C) * HW;
          float* o = out + p * HW;
          for (int64_t i = 0; i < HW; ++i) o[i] = xc[i] * m[i];
        }
      },
      chunk_for(HW));
}

void softmax_weights(float* w, const float* scores, int64_t B, int64_t K) {
  for (int64_t b = 0; b < B; ++b) {
    const float* s = scores + b * K;
    if (K == 0) continue;
    double mx = s[0];
    for (int64_t k = 1; k < K; ++k) mx = std::max(mx, static_cast<double>(s[k]));
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(s[k] - mx);
    for (int64_t k = 0; k < K; ++k) w[b * K + k] = static_cast<float>(std::exp(s[k] - mx) / sum);
  }
}

void scorecam_constant_channels(uint8_t* is_constant, const float* A, int64_t B, int64_t K, int64_t h, int64_t w,
                                ThreadPool& pool) {
  check_sizes("scorecam_constant_channels", B, K, h, w);
  const int64_t Z = h * w;
  pool.parallel_for(
      B * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const float* a = A + p * Z;
          bool constant = true;
          for (int64_t i = 1; i < Z && constant; ++i) constant = a[i] == a[0];
          is_constant[p] = constant ? 1 : 0;
        }
      },
      chunk_for(Z));
}

void scorecam_paper_weights(float* w, const float* probs, const uint8_t* is_constant, int64_t B, int64_t K) {
  for (int64_t i = 0; i < B * K; ++i) w[i] = is_constant[i] ? 0.f : probs[i];
}

// ---- Ablation-CAM ----------------------------------------------------------------------------------------

void ablation_values(float* values, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool) {
  check_sizes("ablation_values", B, K, h, w);
  const int64_t n = K * h * w;
  if (B == 0) return;
  CAMRT_CHECK(n > 0, "ablation_values: empty activation");
  pool.parallel_for(
      B,
      [=](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const float* a = A + b * n;
          float mn = a[0];
          for (int64_t i = 1; i < n; ++i) mn = std::min(mn, a[i]);
          // 1e7: pytorch-grad-cam's ABLATION_VALUE, "very negative" next to any activation; fp32 subtraction.
          values[b] = mn == 0.f ? 0.f : mn - 1e7f;
        }
      },
      1);
}

void ablation_batch(float* out, const float* A_image, float value, int64_t k_begin, int64_t n, int64_t K, int64_t h,
                    int64_t w, ThreadPool& pool) {
  check_sizes("ablation_batch", n, K, h, w);
  CAMRT_CHECK(k_begin >= 0 && k_begin + n <= K,
              "ablation_batch: channels [" << k_begin << ", " << k_begin + n << ") outside [0, " << K << ")");
  const int64_t Z = h * w, KZ = K * Z;
  pool.parallel_for(
      n * K,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t i = p / K, k = p % K;
          float* o = out + i * KZ + k * Z;
          if (k == k_begin + i)
            std::fill(o, o + Z, value);
          else
            std::memcpy(o, A_image + k * Z, static_cast<size_t>(Z) * sizeof(float));
        }
      },
      chunk_for(Z));
}

void ablation_weights(float* w, const float* y, const float* y_ablated, int64_t B, int64_t K) {
  for (int64_t b = 0; b < B; ++b) {
    CAMRT_CHECK(y[b] != 0.f, "Ablation-CAM: the target score of image " << b
                                                                        << " is exactly 0, so (y - y_k) / y is undefined");
    const double yb = y[b];
    for (int64_t k = 0; k < K; ++k) w[b * K + k] = static_cast<float>((yb - y_ablated[b * K + k]) / yb);
  }
}

// ---- CAM -------------------------------------------------------------------------------------------------

void class_activation_map(float* cam, const float* fc_weight, const int64_t* classes, const float* A, int64_t B,
                          int64_t K, int64_t h, int64_t w, int64_t num_classes, ThreadPool& pool) {
  check_sizes("class_activation_map", B, K, h, w);
  for (int64_t b = 0; b < B; ++b)
    CAMRT_CHECK(classes[b] >= 0 && classes[b] < num_classes,
                "CAM: class " << classes[b] << " of image " << b << " outside the fc layer's " << num_classes << " classes");
  const int64_t Z = h * w;
  channel_sum(cam, B, K, Z, pool, [=](int64_t b, int64_t k, int64_t z0, int64_t n, double* acc) {
    const double wk = fc_weight[classes[b] * K + k];
    const float* a = A + (b * K + k) * Z + z0;
    for (int64_t j = 0; j < n; ++j) acc[j] += wk * a[j];
  });
}

// ---- Smooth Grad-CAM++ noisy copies -----------------------------------------------------------------------

void smooth_noise_sigma(float* sigma, const float* x, int64_t B, int64_t plane) {
  CAMRT_CHECK(B >= 0 && plane > 0, "smooth_noise_sigma: bad sizes");
  // A NaN pixel makes sigma NaN wherever it sits (std::minmax_element's answer would depend on its position).
  for (int64_t b = 0; b < B; ++b) {
    float lo = INFINITY, hi = -INFINITY;
    bool any_nan = false;
    for (const float* v = x + b * plane; v != x + (b + 1) * plane; ++v) {
      lo = std::min(lo, *v);
      hi = std::max(hi, *v);
      any_nan |= std::isnan(*v);
    }
    sigma[b] = any_nan ? NAN : 0.2f * (hi - lo);
  }
}

void smooth_noisy_copies(float* out, const float* x, const float* z, const float* sigma, int64_t first, int64_t count,
                         int64_t S, int64_t B, int64_t N, int64_t plane, bool scaled, ThreadPool& pool) {
  CAMRT_CHECK(count >= 0 && count <= S && N >= 1 && B % N == 0 && plane >= 0, "smooth_noisy_copies: bad sizes");
  pool.parallel_for(S * B, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r / B, b = r % B;
      float* row = out + r * plane;
      if (s >= count) {
        std::fill(row, row + plane, 0.f);
        continue;
      }
      const float* xb = x + b * plane;
      const float* zb = z + ((first + s) * N + b % N) * plane;
      const float scale = sigma[b];
      for (int64_t i = 0; i < plane; ++i) {
        const float noise = scaled ? zb[i] * scale + 0.f : zb[i];  // std::normal_distribution's y * stddev + mean
        row[i] = xb[i] + noise;
      }
    }
  }, 1);
}

// ---- targets and seeds -----------------------------------------------------------------------------------

namespace {
// The ranking key of a logit: the number itself, -inf below every number, NaN below -inf (the GPU twin uses the
// same key).
double rank_key(float z) {
  if (std::isnan(z)) return -DBL_MAX;
  if (std::isinf(z) && z < 0) return -1e300;
  return static_cast<double>(z);
}
}  // namespace

void rank_targets(int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t T, int64_t fixed_class) {
  CAMRT_CHECK(B >= 0 && C > 0 && T >= 0 && T <= C, "rank_targets: bad sizes (B=" << B << ", C=" << C << ", T=" << T << ")");
  CAMRT_CHECK(fixed_class < C, "rank_targets: class " << fixed_class << " outside the " << C << " classes");
  for (int64_t b = 0; b < B; ++b) {
    const float* z = logits + b * C;
    // Target t: the first in (key descending, index ascending) order after target t - 1.
    double previous_key = INFINITY;
    int64_t previous = -1;
    for (int64_t t = 0; t < T; ++t) {
      if (fixed_class >= 0) {
        classes[t * B + b] = fixed_class;
        continue;
      }
      double best_key = -INFINITY;
      int64_t best = INT64_MAX;
      for (int64_t j = 0; j < C; ++j) {
        const double key = rank_key(z[j]);
        const bool after_previous = key < previous_key || (key == previous_key && j > previous);
        if (after_previous && (key > best_key || (key == best_key && j < best))) best_key = key, best = j;
      }
      classes[t * B + b] = best;
      previous_key = best_key;
      previous = best;
    }
  }
}

void target_seeds(float* seeds, const int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t first,
                  int64_t count, int64_t S, bool softmax) {
  CAMRT_CHECK(B >= 0 && C > 0 && first >= 0 && count >= 0 && count <= S, "target_seeds: bad sizes");
  std::memset(seeds, 0, static_cast<size_t>(S * B * C) * sizeof(float));
  std::vector<double> p(softmax ? static_cast<size_t>(C) : 0);
  for (int64_t s = 0; s < count; ++s) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t c = classes[(first + s) * B + b];
      CAMRT_CHECK(c >= 0 && c < C, "target_seeds: class " << c << " outside the " << C << " classes");
      float* seed = seeds + (s * B + b) * C;
      if (!softmax) {
        seed[c] = 1.f;
        continue;
      }
      const float* z = logits + b * C;
      const float max_z = *std::max_element(z, z + C);
      double sum = 0;
      for (int64_t j = 0; j < C; ++j) sum += p[j] = std::exp(double(z[j]) - max_z);
      for (int64_t j = 0; j < C; ++j) p[j] /= sum;
      for (int64_t j = 0; j < C; ++j) seed[j] = static_cast<float>(p[c] * ((j == c) - p[j]));
    }
  }
}

void target_scores(float* scores, const float* logits, const int64_t* classes, int64_t class_stride, int64_t rows,
                   int64_t C, bool softmax) {
  CAMRT_CHECK(rows >= 0 && C > 0 && class_stride >= 0, "target_scores: bad sizes");
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * C;
    const int64_t c = classes[r * class_stride];
    CAMRT_CHECK(c >= 0 && c < C, "target_scores: class " << c << " outside the " << C << " classes");
    if (!softmax) {
      scores[r] = z[c];
      continue;
    }
    const float max_z = *std::max_element(z, z + C);
    double sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += std::exp(double(z[j]) - max_z);
    scores[r] = static_cast<float>(std::exp(double(z[c]) - max_z) / sum);
  }
}

// ---- post-processing -------------------------------------------------------------------------------------

void relu_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : 0.f;  // also maps -0 to +0
}

void minmax_normalize(float* maps, int64_t count, int64_t hw, ThreadPool& pool) {
  if (hw <= 0) return;
  pool.parallel_for(
      count,
      [=](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) {
          float* x = maps + m * hw;
          float mn = x[0];
          for (int64_t i = 1; i < hw; ++i) mn = std::min(mn, x[i]);
          float mx = 0.f;
          for (int64_t i = 0; i < hw; ++i) {
            x[i] -= mn;
            mx = std::max(mx, x[i]);
          }
          // numpy: float32 array / (1e-7 + float32 max) -> the divisor is formed in double, then rounded to fp32.
          const float denom = static_cast<float>(1e-7 + static_cast<double>(mx));
          for (int64_t i = 0; i < hw; ++i) x[i] /= denom;
        }
      },
      chunk_for(3 * hw));
}

void postprocess_layer(float* out, float* cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, bool apply_relu,
                       ThreadPool& pool) {
  if (apply_relu) relu_inplace(cam, B * h * w);
  minmax_normalize(cam, B, h * w, pool);
  bilinear_resize(out, cam, B, h, w, H, W, /*align_corners=*/false, pool);
}

void aggregate_layers(float* out, const float* per_layer, int64_t L, int64_t B, int64_t H, int64_t W,
                      ThreadPool& pool) {
  CAMRT_CHECK(L >= 1, "aggregate_layers: no layers");
  const int64_t n = B * H * W;
  pool.parallel_for(
      n,
      [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          double s = 0.0;
          for (int64_t l = 0; l < L; ++l) s += std::max(per_layer[l * n + i], 0.f);
          out[i] = static_cast<float>(s / static_cast<double>(L));
        }
      },
      chunk_for(L));
  minmax_normalize(out, B, H * W, pool);
}

void layercam_tanh_scale(float* maps, int64_t count, int64_t hw, ThreadPool& pool) {
  if (hw <= 0) return;
  pool.parallel_for(
      count,
      [=](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) {
          float* x = maps + m * hw;
          float mx = x[0];
          for (int64_t i = 1; i < hw; ++i) mx = std::max(mx, x[i]);
          if (!(mx > 0.f)) continue;
          const double scale = 2.0 / mx;  // gamma = 2 (LayerCAM paper, Eq. 9)
          for (int64_t i = 0; i < hw; ++i) x[i] = static_cast<float>(std::tanh(scale * x[i]));
        }
      },
      chunk_for(8 * hw));
}

void guided_gradcam(float* out, const float* guided, const float* cam, int64_t B, int64_t C, int64_t H, int64_t W,
                    ThreadPool& pool) {
  const int64_t HW = H * W;
  pool.parallel_for(
      B * C,
      [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const float* m = cam + (p / C) * HW;
          for (int64_t i = 0; i < HW; ++i) out[p * HW + i] = guided[p * HW + i] * m[i];
        }
      },
      chunk_for(HW));
}

}  // namespace camrt
