// CAM kernels (kernels/cpu/cam.h) against straightforward double-precision references written here from the
// formulas of docs/cam-spec.md, on seeded random activations/gradients of several (B, K, h, w), plus bilinear
// resize against values pasted from PyTorch and the eigensolver on matrices with known spectra.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/cam.h"

using namespace camrt;

namespace {

using VecD = std::vector<double>;
using VecF = std::vector<float>;

VecF random_vector(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  VecF v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Dims {
  int64_t B, K, h, w;
  int64_t Z() const { return h * w; }
  size_t numel() const { return static_cast<size_t>(B * K * h * w); }
};

// Shapes: degenerate 1x1x1x1, odd small sizes, K > Z, and Z > 256 positions (several tiles of the kernels).
const Dims kShapes[] = {{1, 1, 1, 1}, {2, 3, 4, 5}, {3, 17, 7, 7}, {1, 40, 2, 3}, {2, 5, 20, 19}};

// fp32 result of a sum whose terms are computed and accumulated in double by the kernel: the only rounding is
// the fp32 channel weight (2^-24 relative, channel-weight methods) and the fp32 output, so the error is at
// most ~2 * 2^-24 * sum|terms|. 1e-6 * sum|terms| leaves 8x headroom and still catches any wrong term.
constexpr double kSumRel = 1e-6;

double ref_weight(const float* a, const float* g, int64_t Z, GradCamVariant v) {
  double s = 0, sa = 0, ga = 0, pp = 0;
  for (int64_t i = 0; i < Z; ++i) {
    s += g[i];
    sa += a[i];
    ga += double(g[i]) * double(a[i]);
  }
  for (int64_t i = 0; i < Z; ++i) {
    const double gi = g[i];
    if (gi == 0) continue;  // alpha = 0 where G == 0
    const double alpha = gi * gi / (2 * gi * gi + sa * gi * gi * gi + 1e-6);
    pp += alpha * std::max(gi, 0.0);
  }
  switch (v) {
    case GradCamVariant::GradCam: return s / double(Z);
    case GradCamVariant::GradCamNeg: return -s / double(Z);
    case GradCamVariant::GradCamPlusPlus: return pp;
    case GradCamVariant::XGradCam: return ga / (sa + 1e-7);
    default: return std::nan("");
  }
}

// Per-channel term of the map at one position, and the map as a sum of them.
double ref_term(const float* a, const float* g, int64_t Z, int64_t i, GradCamVariant v) {
  const double ai = a[i], gi = g[i];
  switch (v) {
    case GradCamVariant::HiResCam: return gi * ai;
    case GradCamVariant::GradCamElementwise: return std::max(gi * ai, 0.0);
    case GradCamVariant::LayerCam: return std::max(gi, 0.0) * ai;
    default: return ref_weight(a, g, Z, v) * ai;
  }
}

const GradCamVariant kVariants[] = {GradCamVariant::GradCam,         GradCamVariant::GradCamNeg,
                                    GradCamVariant::HiResCam,        GradCamVariant::GradCamElementwise,
                                    GradCamVariant::GradCamPlusPlus, GradCamVariant::XGradCam,
                                    GradCamVariant::LayerCam};

// ---- double references for resize ----

// PyTorch's documented bilinear sampling, in double: source coordinate dst*(in-1)/(out-1) (align_corners) or
// (dst+0.5)*in/out - 0.5 clamped at 0, linear weights between floor and floor+1 (clamped to the last index).
void ref_resize(VecD& out, const float* in, int64_t ih, int64_t iw, int64_t oh, int64_t ow, bool ac) {
  out.assign(static_cast<size_t>(oh * ow), 0.0);
  auto src = [&](int64_t d, int64_t in_size, int64_t out_size) {
    if (ac) return out_size > 1 ? double(d) * double(in_size - 1) / double(out_size - 1) : 0.0;
    return std::max((double(d) + 0.5) * double(in_size) / double(out_size) - 0.5, 0.0);
  };
  for (int64_t r = 0; r < oh; ++r) {
    const double sy = src(r, ih, oh);
    const int64_t y0 = std::min<int64_t>(int64_t(sy), ih - 1), y1 = std::min<int64_t>(y0 + 1, ih - 1);
    const double ly = sy - double(y0);
    for (int64_t c = 0; c < ow; ++c) {
      const double sx = src(c, iw, ow);
      const int64_t x0 = std::min<int64_t>(int64_t(sx), iw - 1), x1 = std::min<int64_t>(x0 + 1, iw - 1);
      const double lx = sx - double(x0);
      const double top = in[y0 * iw + x0] * (1 - lx) + in[y0 * iw + x1] * lx;
      const double bot = in[y1 * iw + x0] * (1 - lx) + in[y1 * iw + x1] * lx;
      out[static_cast<size_t>(r * ow + c)] = top * (1 - ly) + bot * ly;
    }
  }
}

void ref_minmax(VecD& x) {
  const double mn = *std::min_element(x.begin(), x.end());
  for (double& v : x) v -= mn;
  const double mx = *std::max_element(x.begin(), x.end());
  for (double& v : x) v /= (mx + 1e-7);
}

// ---- Eigen-CAM reference: M^T M (always K x K), power iteration in double ----

VecD ref_eigen_cam(const float* A, int64_t K, int64_t Z) {
  VecD M(static_cast<size_t>(Z * K));  // (Z, K)
  for (int64_t k = 0; k < K; ++k) {
    double mean = 0;
    for (int64_t z = 0; z < Z; ++z) mean += A[k * Z + z];
    mean /= double(Z);
    for (int64_t z = 0; z < Z; ++z) M[z * K + k] = A[k * Z + z] - mean;
  }
  VecD C(static_cast<size_t>(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j)
      for (int64_t z = 0; z < Z; ++z) C[i * K + j] += M[z * K + i] * M[z * K + j];
  VecD v(static_cast<size_t>(K)), t(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) v[k] = 1.0 + 0.37 * std::sin(1.7 * double(k) + 0.3);
  for (int it = 0; it < 3000; ++it) {
    double nrm = 0;
    for (int64_t i = 0; i < K; ++i) {
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += C[i * K + j] * v[j];
      t[i] = s;
      nrm += s * s;
    }
    if (nrm == 0) break;  // zero matrix: cam is 0 whatever v is
    nrm = std::sqrt(nrm);
    for (int64_t i = 0; i < K; ++i) v[i] = t[i] / nrm;
  }
  VecD cam(static_cast<size_t>(Z), 0.0);
  double s = 0;
  for (int64_t z = 0; z < Z; ++z) {
    for (int64_t k = 0; k < K; ++k) cam[z] += M[z * K + k] * v[k];
    double chsum = 0;
    for (int64_t k = 0; k < K; ++k) chsum += A[k * Z + z];
    s += cam[z] * chsum;
  }
  if (s < 0)
    for (double& c : cam) c = -c;
  return cam;
}

// Activations with a clear spectral gap after centring: 3 a b^T + 1 c d^T + 0.05 noise + per-channel offsets
// (removed by the centring). Singular values ~ 3 : 1 : noise, so power iteration converges to 1e-15 quickly.
VecF low_rank_activations(const Dims& d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  VecF A(d.numel());
  const int64_t K = d.K, Z = d.Z();
  for (int64_t b = 0; b < d.B; ++b) {
    VecD a(K), c(K), off(K), bz(Z), dz(Z);
    for (auto* vec : {&a, &c, &off}) for (double& x : *vec) x = u(rng);
    for (auto* vec : {&bz, &dz}) for (double& x : *vec) x = u(rng);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t z = 0; z < Z; ++z)
        A[(b * K + k) * Z + z] =
            static_cast<float>(3 * a[k] * bz[z] + c[k] * dz[z] + 0.05 * u(rng) + 2 * off[k]);
  }
  return A;
}

// Random orthogonal matrix (columns) by Gram-Schmidt on a random matrix, twice for orthogonality to 1e-15.
VecD random_orthogonal(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  VecD Q(static_cast<size_t>(n * n));
  for (double& x : Q) x = nd(rng);
  for (int64_t j = 0; j < n; ++j)
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < j; ++i) {
        double dot = 0;
        for (int64_t r = 0; r < n; ++r) dot += Q[r * n + i] * Q[r * n + j];
        for (int64_t r = 0; r < n; ++r) Q[r * n + j] -= dot * Q[r * n + i];
      }
      double nrm = 0;
      for (int64_t r = 0; r < n; ++r) nrm += Q[r * n + j] * Q[r * n + j];
      nrm = std::sqrt(nrm);
      for (int64_t r = 0; r < n; ++r) Q[r * n + j] /= nrm;
    }
  return Q;
}

VecD compose(const VecD& Q, const VecD& lambda, int64_t n) {  // Q diag(lambda) Q^T
  VecD C(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < n; ++k) C[i * n + j] += Q[i * n + k] * lambda[k] * Q[j * n + k];
  return C;
}

}  // namespace

TEST_CASE("grad_cam_forward, channel weights and weighted activations match the spec formulas in double") {
  ThreadPool pool(2);
  for (const Dims& d : kShapes) {
    VecF A = random_vector(d.numel(), 11 + uint32_t(d.K), -1.f, 2.f);
    VecF G = random_vector(d.numel(), 12 + uint32_t(d.K), -0.5f, 0.5f);
    // some exact zeros in G (Grad-CAM++'s alpha rule; ReLU kinks)
    for (size_t i = 0; i < G.size(); i += 7) G[i] = 0.f;
    const int64_t Z = d.Z();
    for (GradCamVariant v : kVariants) {
      CAPTURE(static_cast<int>(v));
      CAPTURE(d.B);
      CAPTURE(d.K);
      CAPTURE(Z);
      VecF cam(static_cast<size_t>(d.B * Z), -99.f);
      grad_cam_forward(cam.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, v, pool);
      VecF terms(d.numel());
      grad_cam_weighted_activations(terms.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, v, pool);
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t z = 0; z < Z; ++z) {
          double ref = 0, scale = 0, term_sum = 0;
          for (int64_t k = 0; k < d.K; ++k) {
            const float* a = A.data() + (b * d.K + k) * Z;
            const float* g = G.data() + (b * d.K + k) * Z;
            const double t = ref_term(a, g, Z, z, v);
            ref += t;
            scale += std::abs(t);
            const float got_t = terms[static_cast<size_t>((b * d.K + k) * Z + z)];
            // one fp32 product (and the fp32 weight): 2 roundings of 2^-24
            REQUIRE(std::abs(got_t - t) <= 2.5e-7 * std::abs(t) + 1e-30);
            term_sum += got_t;
          }
          const double got = cam[static_cast<size_t>(b * Z + z)];
          REQUIRE(std::abs(got - ref) <= kSumRel * scale + 1e-30);
          (void)term_sum;
        }
      if (grad_cam_has_channel_weights(v)) {
        VecF wts(static_cast<size_t>(d.B * d.K));
        grad_cam_channel_weights(wts.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, v, pool);
        for (int64_t p = 0; p < d.B * d.K; ++p) {
          const double ref = ref_weight(A.data() + p * Z, G.data() + p * Z, Z, v);
          // weights: double sums rounded once to fp32 (summation order differs from the reference: ~1e-15)
          REQUIRE(std::abs(wts[p] - ref) <= 1e-7 * std::abs(ref) + 1e-12);
        }
        // grad_cam_forward == weights + weighted_channel_sum, bit for bit (documented)
        VecF cam2(cam.size());
        weighted_channel_sum(cam2.data(), wts.data(), A.data(), d.B, d.K, d.h, d.w, pool);
        REQUIRE(std::memcmp(cam.data(), cam2.data(), cam.size() * sizeof(float)) == 0);
      } else {
        VecF wts(static_cast<size_t>(d.B * d.K));
        CHECK_THROWS_AS(grad_cam_channel_weights(wts.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, v, pool), Error);
      }
    }
  }
}

TEST_CASE("Grad-CAM++: alpha = 0 where G == 0, also when S_k is infinite") {
  ThreadPool pool(1);
  // One image, two channels of 2x2. Channel 0: G all zero -> weight exactly 0. Channel 1: A holds +inf, so
  // S_k = inf and S_k * G^3 = inf * 0 = NaN at the zero-gradient positions; the rule keeps alpha = 0 there,
  // and alpha = G^2 / inf = 0 elsewhere, so the weight is 0, not NaN.
  const float inf = std::numeric_limits<float>::infinity();
  VecF A = {1.f, 2.f, 3.f, 4.f, /**/ 1.f, inf, 0.5f, 2.f};
  VecF G = {0.f, 0.f, 0.f, 0.f, /**/ 0.f, 0.3f, 0.f, -0.2f};
  VecF w(2, -1.f);
  grad_cam_channel_weights(w.data(), A.data(), G.data(), 1, 2, 2, 2, GradCamVariant::GradCamPlusPlus, pool);
  CHECK(w[0] == 0.f);
  CHECK(w[1] == 0.f);
  // Finite case: zeros contribute nothing, the rest follow the formula (checked against a hand computation).
  VecF A2 = {1.f, 2.f, 3.f, 4.f};  // S = 10
  VecF G2 = {0.f, 0.5f, -0.25f, 0.f};
  float w2 = 0;
  grad_cam_channel_weights(&w2, A2.data(), G2.data(), 1, 1, 2, 2, GradCamVariant::GradCamPlusPlus, pool);
  const double g = 0.5, expected = g * g / (2 * g * g + 10 * g * g * g + 1e-6) * g;  // only G = 0.5 has ReLU(G) > 0
  CHECK(std::abs(w2 - expected) <= 1e-7 * expected);
}

TEST_CASE("weighted_channel_sum, scale_channels, elementwise_product, class_activation_map") {
  ThreadPool pool(2);
  for (const Dims& d : kShapes) {
    const int64_t Z = d.Z();
    VecF A = random_vector(d.numel(), 21, -1.f, 1.f);
    VecF W = random_vector(static_cast<size_t>(d.B * d.K), 22, -2.f, 2.f);
    VecF cam(static_cast<size_t>(d.B * Z));
    weighted_channel_sum(cam.data(), W.data(), A.data(), d.B, d.K, d.h, d.w, pool);
    VecF scaled(d.numel());
    scale_channels(scaled.data(), A.data(), W.data(), d.B, d.K, d.h, d.w, pool);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t z = 0; z < Z; ++z) {
        double ref = 0, scale = 0;
        for (int64_t k = 0; k < d.K; ++k) {
          const size_t i = static_cast<size_t>((b * d.K + k) * Z + z);
          const double t = double(W[b * d.K + k]) * A[i];
          ref += t;
          scale += std::abs(t);
          REQUIRE(scaled[i] == static_cast<float>(t));  // one fp32 product, exactly rounded
        }
        REQUIRE(std::abs(cam[b * Z + z] - ref) <= kSumRel * scale + 1e-30);
      }
    VecF B2 = random_vector(d.numel(), 23);
    VecF prod(d.numel());
    elementwise_product(prod.data(), A.data(), B2.data(), int64_t(d.numel()), pool);
    for (size_t i = 0; i < prod.size(); ++i) REQUIRE(prod[i] == A[i] * B2[i]);

    // CAM: rows of a (C, K) fc weight picked per image
    const int64_t C = 5;
    VecF fc = random_vector(static_cast<size_t>(C * d.K), 24, -1.f, 1.f);
    std::vector<int64_t> classes(static_cast<size_t>(d.B));
    for (int64_t b = 0; b < d.B; ++b) classes[b] = (3 * b + 1) % C;
    class_activation_map(cam.data(), fc.data(), classes.data(), A.data(), d.B, d.K, d.h, d.w, C, pool);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t z = 0; z < Z; ++z) {
        double ref = 0, scale = 0;
        for (int64_t k = 0; k < d.K; ++k) {
          const double t = double(fc[classes[b] * d.K + k]) * A[(b * d.K + k) * Z + z];
          ref += t;
          scale += std::abs(t);
        }
        REQUIRE(std::abs(cam[b * Z + z] - ref) <= kSumRel * scale + 1e-30);
      }
    classes[0] = C;  // out of range
    CHECK_THROWS_AS(class_activation_map(cam.data(), fc.data(), classes.data(), A.data(), d.B, d.K, d.h, d.w, C, pool),
                    Error);
  }
}

TEST_CASE("Smooth Grad-CAM++: accumulated moments and the spec formula on the means") {
  ThreadPool pool(2);
  const Dims d{2, 6, 5, 4};
  const int64_t Z = d.Z(), n = int64_t(d.numel()), samples = 3;
  VecF A = random_vector(d.numel(), 31, -0.5f, 1.5f);
  VecF D1(d.numel(), 0.f), D2(d.numel(), 0.f), D3(d.numel(), 0.f);
  VecD r1(d.numel(), 0.0), r2(d.numel(), 0.0), r3(d.numel(), 0.0);
  for (int s = 0; s < samples; ++s) {
    VecF G = random_vector(d.numel(), 40 + s, -0.4f, 0.4f);
    // a channel whose gradient is zero in every sample: D2 == 0 there
    for (int64_t i = 0; i < Z; ++i) G[static_cast<size_t>(2 * Z + i)] = 0.f;
    smooth_gradcampp_accumulate(D1.data(), D2.data(), D3.data(), G.data(), n, pool);
    for (size_t i = 0; i < G.size(); ++i) {
      r1[i] += G[i];
      r2[i] += double(G[i]) * G[i];
      r3[i] += double(G[i]) * G[i] * G[i];
    }
  }
  for (size_t i = 0; i < D1.size(); ++i) {
    // a few fp32 additions of double-exact powers: <= samples * 2^-24 relative to the sum of magnitudes
    REQUIRE(std::abs(D1[i] - r1[i]) <= 3e-7 * 3 * 0.4 + 1e-30);
    REQUIRE(std::abs(D2[i] - r2[i]) <= 3e-7 * r2[i] + 1e-30);
    REQUIRE(std::abs(D3[i] - r3[i]) <= 3e-7 * 3 * 0.064 + 1e-30);
  }
  for (size_t i = 0; i < D1.size(); ++i) {
    D1[i] /= samples;
    D2[i] /= samples;
    D3[i] /= samples;
  }
  VecF cam(static_cast<size_t>(d.B * Z)), wts(static_cast<size_t>(d.B * d.K));
  smooth_gradcampp_forward(cam.data(), A.data(), D1.data(), D2.data(), D3.data(), d.B, d.K, d.h, d.w, pool);
  smooth_gradcampp_channel_weights(wts.data(), A.data(), D1.data(), D2.data(), D3.data(), d.B, d.K, d.h, d.w, pool);
  VecD wref(static_cast<size_t>(d.B * d.K));
  for (int64_t p = 0; p < d.B * d.K; ++p) {
    double S = 0, wk = 0;
    for (int64_t i = 0; i < Z; ++i) S += A[p * Z + i];
    for (int64_t i = 0; i < Z; ++i) {
      const double d1 = D1[p * Z + i], d2 = D2[p * Z + i], d3 = D3[p * Z + i];
      if (d2 == 0) continue;
      wk += d2 / (2 * d2 + S * d3 + 1e-6) * std::max(d1, 0.0);
    }
    wref[p] = wk;
    REQUIRE(std::abs(wts[p] - wk) <= 1e-7 * std::abs(wk) + 1e-12);
  }
  CHECK(wts[2] == 0.f);  // the all-zero-gradient channel of image 0
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t z = 0; z < Z; ++z) {
      double ref = 0, scale = 0;
      for (int64_t k = 0; k < d.K; ++k) {
        const double t = wref[b * d.K + k] * A[(b * d.K + k) * Z + z];
        ref += t;
        scale += std::abs(t);
      }
      REQUIRE(std::abs(cam[b * Z + z] - ref) <= kSumRel * scale + 1e-30);
    }
}

TEST_CASE("NormGrad: product of the channel-vector L2 norms") {
  ThreadPool pool(2);
  for (const Dims& d : kShapes) {
    const int64_t Z = d.Z();
    VecF A = random_vector(d.numel(), 51), G = random_vector(d.numel(), 52);
    VecF cam(static_cast<size_t>(d.B * Z));
    normgrad_forward(cam.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, pool);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t z = 0; z < Z; ++z) {
        double ga = 0, aa = 0;
        for (int64_t k = 0; k < d.K; ++k) {
          const size_t i = static_cast<size_t>((b * d.K + k) * Z + z);
          ga += double(G[i]) * G[i];
          aa += double(A[i]) * A[i];
        }
        const double ref = std::sqrt(ga) * std::sqrt(aa);
        REQUIRE(cam[b * Z + z] >= 0.f);
        REQUIRE(std::abs(cam[b * Z + z] - ref) <= 2e-7 * ref + 1e-30);  // one fp32 rounding of a double result
      }
  }
}

TEST_CASE("symmetric_top_eigenpair on matrices with known spectra (separated, close, equal, negative)") {
  ThreadPool pool(2);
  for (int64_t n : {1, 2, 3, 10, 61, 130}) {
    CAPTURE(n);
    const VecD Q = random_orthogonal(n, 100 + uint32_t(n));
    struct Case {
      const char* name;
      double top, second;  // the two largest eigenvalues; the rest spread in [-0.5, 0.1)
    };
    const Case cases[] = {{"separated", 2.0, 1.0},
                          {"gap 1e-6", 1.0, 1.0 - 1e-6},
                          {"equal", 1.0, 1.0},
                          {"negative dominates in magnitude", 0.25, 0.2}};
    for (const Case& c : cases) {
      const std::string name = c.name;
      CAPTURE(name);
      VecD lambda(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) lambda[i] = -0.5 + 0.6 * double(i) / double(n);  // < 0.1
      lambda[0] = c.top;
      if (n > 1) lambda[1] = c.second;
      if (std::string(c.name).rfind("negative", 0) == 0 && n > 2) lambda[2] = -10.0;
      VecD C = compose(Q, lambda, n), C0 = C;
      VecD v(static_cast<size_t>(n)), work(symmetric_eigen_work_doubles(n));
      const double got = symmetric_top_eigenpair(v.data(), C.data(), n, work.data(), pool);
      const double cnorm = 10.0;  // bound on ||C||_2 over the cases
      // eigenvalue: bisection to 2 eps ||T||, tridiagonalization backward error ~ n eps ||C||
      REQUIRE(std::abs(got - c.top) <= 1e-12 * cnorm);
      // residual ||C v - lambda v||: backward stability of the whole pipeline, independent of the gap
      double res = 0, nrm = 0;
      for (int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += C0[i * n + j] * v[j];
        res = std::max(res, std::abs(s - got * v[i]));
        nrm += v[i] * v[i];
      }
      REQUIRE(std::abs(nrm - 1) <= 1e-12);
      REQUIRE(res <= 1e-12 * cnorm);
      // direction: along q1 (error ~ eps ||C|| / gap), or inside span{q1, q2} when the top two are equal
      double p1 = 0, p2 = 0;
      for (int64_t i = 0; i < n; ++i) {
        p1 += Q[i * n + 0] * v[i];
        if (n > 1) p2 += Q[i * n + 1] * v[i];
      }
      if (std::string(c.name) == "equal")
        REQUIRE(p1 * p1 + p2 * p2 >= 1 - 1e-12);
      else if (std::string(c.name) == "gap 1e-6")
        REQUIRE(std::abs(p1) >= 1 - 1e-8);  // sin(angle) <~ 1e-12 / 1e-6
      else
        REQUIRE(std::abs(p1) >= 1 - 1e-12);
    }
  }
  // Diagonal (nothing to reflect), and the zero matrix (returns 0 and a unit vector, no NaN).
  VecD D = {1, 0, 0, 0, 3, 0, 0, 0, 2}, v(3), work(symmetric_eigen_work_doubles(3));
  CHECK(symmetric_top_eigenpair(v.data(), D.data(), 3, work.data(), pool) == doctest::Approx(3.0).epsilon(1e-14));
  CHECK(std::abs(v[1]) == doctest::Approx(1.0).epsilon(1e-14));
  VecD Zm(9, 0.0);
  CHECK(symmetric_top_eigenpair(v.data(), Zm.data(), 3, work.data(), pool) == 0.0);
  CHECK(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] == doctest::Approx(1.0));
}

TEST_CASE("eigen_cam_forward: projection on the first right-singular vector with the sign rule") {
  ThreadPool pool(2), single(1);
  // K < Z, K > Z (Z x Z Gram path), K == Z, a single channel, a 1x1 map (centred M is 0 -> cam 0), bigger.
  const Dims shapes[] = {{2, 6, 5, 7}, {2, 40, 3, 4}, {1, 9, 3, 3}, {1, 1, 2, 5}, {2, 8, 1, 1}, {1, 300, 8, 8},
                         {3, 50, 16, 16}};
  for (const Dims& d : shapes) {
    CAPTURE(d.B);
    CAPTURE(d.K);
    CAPTURE(d.Z());
    const int64_t Z = d.Z();
    VecF A = low_rank_activations(d, 60 + uint32_t(d.K));
    VecF cam(static_cast<size_t>(d.B * Z));
    VecF scratch(eigen_cam_scratch_floats(d.K, d.h, d.w, pool.num_threads()) + 1);
    // scratch + 1: the kernel must cope with a float pointer that is not 8-byte aligned
    eigen_cam_forward(cam.data(), A.data(), d.B, d.K, d.h, d.w, pool, scratch.data() + 1);
    for (int64_t b = 0; b < d.B; ++b) {
      const VecD ref = ref_eigen_cam(A.data() + b * d.K * Z, d.K, Z);
      double scale = 0;
      for (double r : ref) scale = std::max(scale, std::abs(r));
      // Both in double from the same fp32 input; they differ by the fp32 output rounding (6e-8 relative) and
      // the reference's power-iteration residual (gap ~ 1/9: converged to 1e-15), so 1e-6 of the map's max.
      for (int64_t z = 0; z < Z; ++z) REQUIRE(std::abs(cam[b * Z + z] - ref[z]) <= 1e-6 * scale + 1e-30);
      if (Z == 1)
        REQUIRE(cam[b * Z] == 0.f);
      else
        REQUIRE(scale > 0.1);  // the test data has a real signal to project
    }
    // Thread count, batch grouping and internally allocated scratch do not change a single bit.
    VecF cam1(cam.size());
    eigen_cam_forward(cam1.data(), A.data(), d.B, d.K, d.h, d.w, single, nullptr);
    REQUIRE(std::memcmp(cam.data(), cam1.data(), cam.size() * sizeof(float)) == 0);
    for (int64_t b = 0; b < d.B; ++b) {
      eigen_cam_forward(cam1.data(), A.data() + b * d.K * Z, 1, d.K, d.h, d.w, pool, nullptr);
      REQUIRE(std::memcmp(cam.data() + b * Z, cam1.data(), static_cast<size_t>(Z) * sizeof(float)) == 0);
    }
    // Sign rule: Eigen-CAM of -A is exactly -Eigen-CAM(A) (same Gram matrix, same v, the rule flips back).
    VecF neg(A.size());
    for (size_t i = 0; i < A.size(); ++i) neg[i] = -A[i];
    eigen_cam_forward(cam1.data(), neg.data(), d.B, d.K, d.h, d.w, pool, nullptr);
    for (size_t i = 0; i < cam.size(); ++i) REQUIRE(cam1[i] == -cam[i]);
  }
}

TEST_CASE("bilinear_resize matches PyTorch F.interpolate (3x4 -> 7x9 and 3x4 -> 2x3, both align_corners)") {
  // Values from /usr/bin/python3 (torch 1.13.0a0), printed with '%.9g':
  //   x = torch.tensor([[0.5,-1.25,2.0,3.5],[1.75,0.0,-0.5,4.25],[-2.0,1.5,0.25,-3.0]]).reshape(1,1,3,4)
  //   F.interpolate(x, size=(7,9), mode='bilinear', align_corners=True / False)   (and size=(2,3))
  ThreadPool pool(2);
  const VecF x = {0.5f, -1.25f, 2.0f, 3.5f, 1.75f, 0.0f, -0.5f, 4.25f, -2.0f, 1.5f, 0.25f, -3.0f};
  const VecF ac_true = {
      0.5f, -0.15625f, -0.8125f, -0.84375f, 0.375f, 1.59375f, 2.375f, 2.9375f, 3.5f,
      0.916666687f, 0.260416687f, -0.395833284f, -0.583333313f, 0.166666657f, 0.916666627f, 1.81249988f, 2.78124976f, 3.75f,
      1.33333337f, 0.677083373f, 0.0208333582f, -0.322916657f, -0.0416666791f, 0.239583299f, 1.25f, 2.625f, 4.f,
      1.75f, 1.09375f, 0.43750003f, -0.062499959f, -0.24999997f, -0.4375f, 0.6875f, 2.46875f, 4.25f,
      0.499999851f, 0.499999911f, 0.5f, 0.40625003f, 0.125000045f, -0.15624997f, 0.270833284f, 1.05208313f, 1.83333302f,
      -0.750000298f, -0.0937501416f, 0.5625f, 0.87500006f, 0.500000119f, 0.12500006f, -0.145833433f, -0.364583671f, -0.58333391f,
      -2.f, -0.68749994f, 0.625f, 1.34375f, 0.875f, 0.40625f, -0.5625f, -1.78124988f, -3.f};
  const VecF ac_false = {
      0.5f, 0.208333313f, -0.569444418f, -1.06944442f, 0.375f, 1.81944454f, 2.58333325f, 3.25f, 3.5f,
      0.678571463f, 0.386904776f, -0.390873045f, -0.920634925f, 0.285714298f, 1.49206352f, 2.40674615f, 3.27976203f, 3.60714293f,
      1.21428573f, 0.922619045f, 0.144841313f, -0.474206328f, 0.0178571269f, 0.509920597f, 1.87698412f, 3.36904764f, 3.92857146f,
      1.75f, 1.45833325f, 0.680555582f, -0.0277777631f, -0.249999985f, -0.472222239f, 1.34722221f, 3.45833349f, 4.25f,
      0.142857015f, 0.226190418f, 0.448412657f, 0.597222269f, 0.232142895f, -0.132936507f, 0.335317373f, 0.922618926f, 1.14285696f,
      -1.46428573f, -1.00595236f, 0.216269851f, 1.22222221f, 0.714285731f, 0.206349164f, -0.676587343f, -1.61309528f, -1.96428585f,
      -2.f, -1.41666663f, 0.138888881f, 1.43055546f, 0.875f, 0.319444418f, -1.01388884f, -2.45833349f, -3.f};
  const VecF down_true = {0.5f, 0.375f, 3.5f, -2.f, 0.875f, -3.f};
  const VecF down_false = {0.520833313f, 0.218750179f, 3.30208349f, -0.697916627f, 0.59374994f, -0.979166746f};
  // Two planes (the second is 2x the first) to exercise the plane offsets. The index/lambda arithmetic is
  // ATen's, in fp32; only FMA contraction could differ, one or two fp32 roundings of values <= 4.25: 2e-6.
  VecF in2(x);
  for (float v : x) in2.push_back(2 * v);
  auto check = [&](int64_t oh, int64_t ow, bool ac, const VecF& expected) {
    CAPTURE(oh);
    CAPTURE(ac);
    VecF out(static_cast<size_t>(2 * oh * ow));
    bilinear_resize(out.data(), in2.data(), 2, 3, 4, oh, ow, ac, pool);
    for (size_t i = 0; i < expected.size(); ++i) {
      REQUIRE(std::abs(out[i] - expected[i]) <= 2e-6);
      REQUIRE(std::abs(out[expected.size() + i] - 2 * expected[i]) <= 4e-6);
    }
  };
  check(7, 9, true, ac_true);
  check(7, 9, false, ac_false);
  check(2, 3, true, down_true);
  check(2, 3, false, down_false);
}

TEST_CASE("bilinear_resize against the double reference on random planes (up, down, same size, 1 pixel)") {
  ThreadPool pool(2);
  struct R {
    int64_t ih, iw, oh, ow;
  };
  for (const R r : {R{5, 6, 13, 11}, R{9, 8, 4, 5}, R{7, 7, 7, 7}, R{1, 1, 4, 3}, R{4, 3, 1, 1}, R{7, 7, 224, 224}}) {
    for (bool ac : {true, false}) {
      CAPTURE(r.ih);
      CAPTURE(r.oh);
      CAPTURE(ac);
      const int64_t planes = 3;
      VecF in = random_vector(static_cast<size_t>(planes * r.ih * r.iw), 70, -2.f, 2.f);
      VecF out(static_cast<size_t>(planes * r.oh * r.ow));
      bilinear_resize(out.data(), in.data(), planes, r.ih, r.iw, r.oh, r.ow, ac, pool);
      for (int64_t p = 0; p < planes; ++p) {
        VecD ref;
        ref_resize(ref, in.data() + p * r.ih * r.iw, r.ih, r.iw, r.oh, r.ow, ac);
        // fp32 lambdas (relative error 2^-24 of the source coordinate <= 224) times a slope <= 4 per pixel,
        // plus 3 fp32 roundings of values <= 2: about 1e-5 at the largest coordinate
        for (size_t i = 0; i < ref.size(); ++i) REQUIRE(std::abs(out[p * r.oh * r.ow + i] - ref[i]) <= 2e-5);
      }
    }
  }
}

TEST_CASE("Score-CAM: masks, masked inputs, softmax and paper weights") {
  ThreadPool pool(2);
  const Dims d{2, 4, 3, 5};
  const int64_t H = 11, W = 13, Z = d.Z();
  VecF A = random_vector(d.numel(), 80, -1.f, 3.f);
  for (int64_t i = 0; i < Z; ++i) A[static_cast<size_t>(1 * Z + i)] = 0.f;    // dead channel (all zero)
  for (int64_t i = 0; i < Z; ++i) A[static_cast<size_t>(6 * Z + i)] = 1.5f;   // constant nonzero channel
  VecF masks(static_cast<size_t>(d.B * d.K * H * W));
  scorecam_masks(masks.data(), A.data(), d.B, d.K, d.h, d.w, H, W, pool);
  for (int64_t p = 0; p < d.B * d.K; ++p) {
    CAPTURE(p);
    VecD up;
    ref_resize(up, A.data() + p * Z, d.h, d.w, H, W, /*align_corners=*/true);
    const double mn = *std::min_element(up.begin(), up.end()), mx = *std::max_element(up.begin(), up.end());
    const float* m = masks.data() + p * H * W;
    for (size_t i = 0; i < up.size(); ++i) {
      if (p == 1) {
        REQUIRE(m[i] == 0.f);  // 0 / (0 + 1e-8)
        continue;
      }
      if (p == 6) {
        REQUIRE(std::abs(m[i]) <= 1e-6f);  // fp32 wobble of a constant plane divided by (wobble + 1e-8): tiny
        continue;
      }
      const double ref = (up[i] - mn) / (mx - mn + 1e-8);
      // fp32 upsampling error (~1e-6 of values <= 3) divided by the range (> 1 for this data): < 1e-5
      REQUIRE(std::abs(m[i] - ref) <= 1e-5);
    }
  }
  // masked inputs: every input channel times the mask, exactly one fp32 product
  const int64_t C = 3, n = 3;
  VecF x = random_vector(static_cast<size_t>(C * H * W), 81);
  VecF out(static_cast<size_t>(n * C * H * W));
  apply_mask(out.data(), x.data(), masks.data() + 1 * H * W, n, C, H, W, pool);  // channels 1..3 of image 0
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t q = 0; q < H * W; ++q)
        REQUIRE(out[(i * C + c) * H * W + q] == x[c * H * W + q] * masks[(1 + i) * H * W + q]);

  // default weights: softmax over channels, with large scores (stability) in the second image
  VecF scores = {1.f, 2.f, 3.f, -1.f, 1000.f, 1001.f, 999.f, 1000.5f};
  VecF wts(8);
  softmax_weights(wts.data(), scores.data(), 2, 4);
  for (int64_t b = 0; b < 2; ++b) {
    double mx = -1e300, sum = 0;
    for (int64_t k = 0; k < 4; ++k) mx = std::max(mx, double(scores[b * 4 + k]));
    for (int64_t k = 0; k < 4; ++k) sum += std::exp(scores[b * 4 + k] - mx);
    for (int64_t k = 0; k < 4; ++k)
      REQUIRE(std::abs(wts[b * 4 + k] - std::exp(scores[b * 4 + k] - mx) / sum) <= 1e-7);  // fp32 of a value < 1
  }
  // paper variant: constant channels (dead or not) get 0, the rest the caller's probabilities
  std::vector<uint8_t> constant(static_cast<size_t>(d.B * d.K), 9);
  scorecam_constant_channels(constant.data(), A.data(), d.B, d.K, d.h, d.w, pool);
  const std::vector<uint8_t> expected_constant = {0, 1, 0, 0, 0, 0, 1, 0};
  CHECK(constant == expected_constant);
  VecF probs = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f}, pw(8);
  scorecam_paper_weights(pw.data(), probs.data(), constant.data(), 2, 4);
  const VecF expected_pw = {0.1f, 0.f, 0.3f, 0.4f, 0.5f, 0.6f, 0.f, 0.8f};
  CHECK(pw == expected_pw);
}

TEST_CASE("Ablation-CAM: ablation value, ablated copies, weights") {
  ThreadPool pool(2);
  const Dims d{3, 4, 2, 3};
  const int64_t Z = d.Z(), KZ = d.K * Z;
  VecF A = random_vector(d.numel(), 90, 0.f, 2.f);
  A[static_cast<size_t>(0 * KZ + 5)] = 0.f;                                   // image 0: min exactly 0 (post-ReLU)
  for (int64_t i = 0; i < KZ; ++i) A[static_cast<size_t>(1 * KZ + i)] -= 3.f;  // image 1: negative values
  for (int64_t i = 0; i < KZ; ++i) A[static_cast<size_t>(2 * KZ + i)] += 1.f;  // image 2: all positive
  VecF values(3);
  ablation_values(values.data(), A.data(), d.B, d.K, d.h, d.w, pool);
  CHECK(values[0] == 0.f);
  for (int64_t b = 1; b < 3; ++b) {
    const float mn = *std::min_element(A.begin() + b * KZ, A.begin() + (b + 1) * KZ);
    CHECK(values[b] == mn - 1e7f);
  }
  const int64_t k_begin = 1, n = 3;
  VecF batch(static_cast<size_t>(n * KZ));
  ablation_batch(batch.data(), A.data() + KZ, values[1], k_begin, n, d.K, d.h, d.w, pool);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t z = 0; z < Z; ++z)
        REQUIRE(batch[(i * d.K + k) * Z + z] == (k == k_begin + i ? values[1] : A[KZ + k * Z + z]));
  CHECK_THROWS_AS(ablation_batch(batch.data(), A.data(), 0.f, 2, 3, d.K, d.h, d.w, pool), Error);  // channel 4 of 4

  VecF y = {2.f, -0.5f}, ya = {1.f, 2.f, 3.f, -0.25f, -1.f, 0.5f}, w(6);
  ablation_weights(w.data(), y.data(), ya.data(), 2, 3);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t k = 0; k < 3; ++k) CHECK(w[b * 3 + k] == static_cast<float>((double(y[b]) - ya[b * 3 + k]) / y[b]));
  y[1] = 0.f;
  CHECK_THROWS_AS(ablation_weights(w.data(), y.data(), ya.data(), 2, 3), Error);
}

TEST_CASE("post-processing: ReLU, min-max normalization (constant maps -> 0), resize, layer aggregation, tanh") {
  ThreadPool pool(2);
  // normalization against the double formula; an fp32 subtraction and division: 2 roundings of values <= 1
  const int64_t count = 4, hw = 300;
  VecF maps = random_vector(static_cast<size_t>(count * hw), 100, -3.f, 5.f);
  std::fill(maps.begin() + 2 * hw, maps.begin() + 3 * hw, 0.7f);  // constant map
  std::fill(maps.begin() + 3 * hw, maps.begin() + 4 * hw, 0.f);   // all-zero map
  VecF norm = maps;
  minmax_normalize(norm.data(), count, hw, pool);
  for (int64_t m = 0; m < count; ++m) {
    VecD ref(maps.begin() + m * hw, maps.begin() + (m + 1) * hw);
    ref_minmax(ref);
    for (int64_t i = 0; i < hw; ++i) {
      const float v = norm[m * hw + i];
      REQUIRE(std::isfinite(v));
      if (m >= 2)
        REQUIRE(v == 0.f);  // constant map -> exactly 0, no NaN
      else
        REQUIRE(std::abs(v - ref[i]) <= 3e-7);
    }
  }
  VecF r = {-1.f, 0.f, 2.f, -0.f, 3.5f};
  relu_inplace(r.data(), 5);
  CHECK(r == VecF{0.f, 0.f, 2.f, 0.f, 3.5f});

  // one layer's steps 1-3, then step 4 for L = 1 and L = 3, against the double pipeline
  const int64_t B = 2, h = 7, w = 6, H = 29, W = 31, L = 3;
  VecF raw = random_vector(static_cast<size_t>(L * B * h * w), 101, -1.f, 2.f);
  VecF per_layer(static_cast<size_t>(L * B * H * W));
  VecD ref_layers(per_layer.size());
  for (int64_t l = 0; l < L; ++l) {
    VecF cam(raw.begin() + l * B * h * w, raw.begin() + (l + 1) * B * h * w);
    const bool relu = l != 2;  // layer 2 as NormGrad would be: no ReLU (its negative values survive step 2)
    postprocess_layer(per_layer.data() + l * B * H * W, cam.data(), B, h, w, H, W, relu, pool);
    for (int64_t b = 0; b < B; ++b) {
      VecD m(raw.begin() + (l * B + b) * h * w, raw.begin() + (l * B + b + 1) * h * w);
      if (relu)
        for (double& v : m) v = std::max(v, 0.0);
      ref_minmax(m);
      VecF mf(m.begin(), m.end());
      VecD up;
      ref_resize(up, mf.data(), h, w, H, W, /*align_corners=*/false);
      for (int64_t i = 0; i < H * W; ++i) {
        ref_layers[(l * B + b) * H * W + i] = up[i];
        // normalized values <= 1: fp32 normalization (3e-7) + resize (1e-6)
        REQUIRE(std::abs(per_layer[(l * B + b) * H * W + i] - up[i]) <= 2e-6);
      }
    }
  }
  for (int64_t layers : {int64_t(1), L}) {
    CAPTURE(layers);
    VecF out(static_cast<size_t>(B * H * W));
    aggregate_layers(out.data(), per_layer.data(), layers, B, H, W, pool);
    for (int64_t b = 0; b < B; ++b) {
      VecD m(static_cast<size_t>(H * W), 0.0);
      for (int64_t l = 0; l < layers; ++l)
        for (int64_t i = 0; i < H * W; ++i) m[i] += std::max(double(per_layer[(l * B + b) * H * W + i]), 0.0) / layers;
      ref_minmax(m);
      double mx = 0;
      for (int64_t i = 0; i < H * W; ++i) {
        REQUIRE(std::abs(out[b * H * W + i] - m[i]) <= 3e-7);
        mx = std::max(mx, double(out[b * H * W + i]));
      }
      CHECK(mx == doctest::Approx(1.0).epsilon(1e-6));  // re-stretched to reach 1 (spec step 4)
    }
  }

  // LayerCAM tanh scaling: tanh(2 cam / max cam); a map with max <= 0 is left unchanged
  VecF lc = {0.5f, -1.f, 2.f, 1.f, /**/ -1.f, -2.f, -0.5f, -3.f};
  const VecF lc0 = lc;
  layercam_tanh_scale(lc.data(), 2, 4, pool);
  for (int64_t i = 0; i < 4; ++i) CHECK(std::abs(lc[i] - std::tanh(2.0 * lc0[i] / 2.0)) <= 1e-7);
  for (int64_t i = 4; i < 8; ++i) CHECK(lc[i] == lc0[i]);
}

TEST_CASE("guided_gradcam broadcasts the map over the input channels") {
  ThreadPool pool(2);
  const int64_t B = 2, C = 3, H = 5, W = 4;
  VecF guided = random_vector(static_cast<size_t>(B * C * H * W), 110), cam = random_vector(static_cast<size_t>(B * H * W), 111, 0.f, 1.f);
  VecF out(guided.size());
  guided_gradcam(out.data(), guided.data(), cam.data(), B, C, H, W, pool);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H * W; ++i)
        REQUIRE(out[(b * C + c) * H * W + i] == guided[(b * C + c) * H * W + i] * cam[b * H * W + i]);
}

TEST_CASE("rank_targets: descending logits, ties to the lower class, -inf then NaN last; a fixed class") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // Image 0: ties (2.0 at classes 1 and 3); image 1: NaN and -inf among numbers.
  const VecF logits = {0.5f, 2.f, -1.f, 2.f, 1.f, /**/ nan, -inf, 3.f, nan, -2.f};
  const int64_t B = 2, C = 5, T = 5;
  std::vector<int64_t> classes(static_cast<size_t>(T * B), -7);
  rank_targets(classes.data(), logits.data(), B, C, T, -1);
  const std::vector<int64_t> image0 = {1, 3, 4, 0, 2}, image1 = {2, 4, 1, 0, 3};
  for (int64_t t = 0; t < T; ++t) {
    CHECK(classes[t * B + 0] == image0[t]);
    CHECK(classes[t * B + 1] == image1[t]);
  }
  rank_targets(classes.data(), logits.data(), B, C, 1, 4);
  CHECK(classes[0] == 4);
  CHECK(classes[1] == 4);
  CHECK_THROWS_AS(rank_targets(classes.data(), logits.data(), B, C, 1, 5), Error);  // class 5 of 5
  CHECK_THROWS_AS(rank_targets(classes.data(), logits.data(), B, C, 6, -1), Error);  // more targets than classes
}

TEST_CASE("target_seeds: one-hot logits, the softmax derivative in double, zero unused slots") {
  const int64_t B = 2, C = 4, S = 3;
  const VecF logits = {1.f, -2.f, 0.5f, 3.f, /**/ 10.f, 10.f, -5.f, 0.f};
  const std::vector<int64_t> classes = {3, 0, /**/ 1, 2};  // (T = 2, B)
  VecF seeds(static_cast<size_t>(S * B * C), 9.f);
  target_seeds(seeds.data(), classes.data(), logits.data(), B, C, 0, 2, S, false);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < C; ++j)
        CHECK(seeds[(s * B + b) * C + j] == (s < 2 && j == classes[s * B + b] ? 1.f : 0.f));
  // Softmax: d p_c / d z_j = p_c (delta_cj - p_j); target 1 only (first = 1, count = 1), slots 1 and 2 zero.
  target_seeds(seeds.data(), classes.data(), logits.data(), B, C, 1, 1, S, true);
  for (int64_t b = 0; b < B; ++b) {
    const float* z = logits.data() + b * C;
    double sum = 0;
    VecD p(C);
    for (int64_t j = 0; j < C; ++j) sum += p[j] = std::exp(double(z[j]));
    for (auto& v : p) v /= sum;
    const int64_t c = classes[B + b];
    for (int64_t j = 0; j < C; ++j) {
      CHECK(std::abs(seeds[b * C + j] - p[c] * ((j == c) - p[j])) <= 1e-7);
      CHECK(seeds[(B + b) * C + j] == 0.f);
      CHECK(seeds[(2 * B + b) * C + j] == 0.f);
    }
  }
}

TEST_CASE("target_scores: the logit or the softmax probability of each row's class (one class or one per row)") {
  const int64_t rows = 3, C = 4;
  const VecF logits = {1.f, -2.f, 0.5f, 3.f, /**/ 10.f, 10.f, -5.f, 0.f, /**/ 0.f, 0.f, 0.f, 0.f};
  const std::vector<int64_t> per_row = {3, 0, 2}, one = {1};
  VecF scores(rows);
  target_scores(scores.data(), logits.data(), per_row.data(), 1, rows, C, false);
  for (int64_t r = 0; r < rows; ++r) CHECK(scores[r] == logits[r * C + per_row[r]]);
  target_scores(scores.data(), logits.data(), one.data(), 0, rows, C, true);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += std::exp(double(logits[r * C + j]));
    CHECK(std::abs(scores[r] - std::exp(double(logits[r * C + 1])) / sum) <= 1e-7);
  }
  const std::vector<int64_t> bad = {4};
  CHECK_THROWS_AS(target_scores(scores.data(), logits.data(), bad.data(), 0, rows, C, false), Error);
}

TEST_CASE("smooth_noisy_copies: x + z * sigma as std::normal_distribution(0, sigma) computes it, zero slots after") {
  ThreadPool pool(2);
  const int64_t B = 2, N = 1, plane = 5, samples = 3, S = 2;
  const VecF x = {0.f, 1.f, 2.f, 3.f, 4.f, /**/ -1.f, -1.f, -1.f, -1.f, -1.f};  // image 1 constant: sigma 0
  VecF sigma(B);
  smooth_noise_sigma(sigma.data(), x.data(), B, plane);
  CHECK(sigma[0] == 0.2f * 4.f);
  CHECK(sigma[1] == 0.f);
  // A NaN pixel makes sigma NaN wherever it sits, first or last (as torch.max's NaN would).
  for (int64_t at : {int64_t(0), plane - 1}) {
    VecF with_nan = x, nan_sigma(B);
    with_nan[at] = NAN;
    smooth_noise_sigma(nan_sigma.data(), with_nan.data(), B, plane);
    CHECK(std::isnan(nan_sigma[0]));
    CHECK(nan_sigma[1] == 0.f);
  }
  // The same generator state gives the same numbers as a distribution at stddev sigma: draw both ways.
  std::mt19937_64 rng(7), rng_ref(7);
  VecF z(static_cast<size_t>(samples * N * plane)), ref(z.size());
  for (int64_t s = 0; s < samples; ++s) {
    std::normal_distribution<float> unit(0.f, 1.f), scaled(0.f, sigma[0]);
    for (int64_t i = 0; i < plane; ++i) z[s * plane + i] = unit(rng), ref[s * plane + i] = x[i] + scaled(rng_ref);
  }
  VecF out(static_cast<size_t>(S * B * plane), 9.f);
  smooth_noisy_copies(out.data(), x.data(), z.data(), sigma.data(), 2, 1, S, B, N, plane, true, pool);  // sample 2
  for (int64_t i = 0; i < plane; ++i) {
    CHECK(out[i] == ref[2 * plane + i]);      // image 0, bit for bit
    CHECK(out[plane + i] == x[plane + i]);   // image 1: sigma 0, no noise
    CHECK(out[2 * plane + i] == 0.f);        // slot 1 unused
  }
  smooth_noisy_copies(out.data(), x.data(), z.data(), sigma.data(), 0, 1, S, B, N, plane, false, pool);  // injected
  for (int64_t i = 0; i < plane; ++i) CHECK(out[i] == x[i] + z[i]);
}
