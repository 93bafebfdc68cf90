// GPU CAM kernels (kernels/cuda/cam.h) against their CPU twins (kernels/cpu/cam.h, which test_cam_kernels.cpp
// checks against double references of docs/cam-spec.md) over B in {1, 3}, K in {1, 7, 64}, odd and even h, w
// (both Eigen-CAM Gram orientations), maps upsampled to odd sizes, in-place calls, and bit-identical reruns.
// Each tolerance says where it comes from; the spec's normalized-map tolerances are checked on top.
#include <doctest/doctest.h>

#include "tests/gpu_test_util.h"

#ifdef CAMRT_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/cam.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cuda/cam.h"
#include "kernels/cuda/runtime.h"

using namespace camrt;

namespace {

using VecF = std::vector<float>;
using VecD = std::vector<double>;

struct Dims {
  int64_t B, K, h, w;
  int64_t Z() const { return h * w; }
  size_t numel() const { return static_cast<size_t>(B * K * h * w); }
  std::string str() const {
    std::ostringstream s;
    s << "(B=" << B << ", K=" << K << ", h=" << h << ", w=" << w << ")";
    return s.str();
  }
};

// B in {1, 3}, K in {1, 7, 64}; Z = 49 (odd), 24 (even), 108 (mixed). K = 64 > Z for the first two and < Z for
// the last, so Eigen-CAM runs both the Z x Z and the K x K Gram matrix.
std::vector<Dims> shape_matrix() {
  std::vector<Dims> shapes;
  for (int64_t B : {1, 3})
    for (int64_t K : {1, 7, 64})
      for (auto hw : {std::pair<int64_t, int64_t>{7, 7}, {4, 6}, {9, 12}}) shapes.push_back({B, K, hw.first, hw.second});
  return shapes;
}

// Input resolutions of the post-processing checks: odd, not multiples of the maps.
const std::pair<int64_t, int64_t> kUpsampled[] = {{17, 23}, {31, 29}};

ThreadPool& pool() {
  static ThreadPool p(2);
  return p;
}

VecF random_vector(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  VecF v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---- device buffers ----

template <typename T>
DeviceBuffer upload(CudaRuntime& rt, const std::vector<T>& v) {
  DeviceBuffer buf(rt, std::max<size_t>(v.size() * sizeof(T), 4), "test_gpu_cam input");
  copy_to_device(rt, buf.data(), v.data(), v.size() * sizeof(T));
  return buf;
}

DeviceBuffer device_buffer(CudaRuntime& rt, size_t bytes) {
  DeviceBuffer buf(rt, std::max<size_t>(bytes, 4), "test_gpu_cam buffer");
  fill_zero(rt, buf.data(), bytes);
  return buf;
}

template <typename T>
std::vector<T> download(CudaRuntime& rt, const DeviceBuffer& buf, size_t n) {
  std::vector<T> v(n);
  copy_to_host(rt, v.data(), buf.data(), n * sizeof(T));  // synchronizes: launch errors surface here
  return v;
}

float* f32(const DeviceBuffer& b) { return reinterpret_cast<float*>(b.data()); }

// Scratch from a *_scratch_bytes size, handed over 4 bytes past a 256-aligned allocation: the launchers promise
// to accept any alignment within the size they asked for.
struct Scratch {
  DeviceBuffer buf;
  void* ptr = nullptr;
  size_t bytes = 0;
  Scratch(CudaRuntime& rt, size_t need) : buf(rt, need + 4, "test_gpu_cam scratch") {
    ptr = need ? buf.data() + 4 : nullptr;
    bytes = need;
  }
};

// ---- comparisons: one CHECK per array, naming the worst element ----

// Passes when |gpu_i - cpu_i| <= bound_i for every i (NaN anywhere fails).
void check_within(const VecF& gpu, const VecF& cpu, const VecD& bound, const std::string& what) {
  REQUIRE(gpu.size() == cpu.size());
  size_t worst = 0;
  double worst_ratio = 0.0;
  bool ok = true;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double d = std::abs(double(gpu[i]) - double(cpu[i]));
    if (!(d <= bound[i])) {
      const double ratio = std::isfinite(d) ? d / std::max(bound[i], 1e-300) : INFINITY;
      if (ok || ratio > worst_ratio) {
        worst = i;
        worst_ratio = ratio;
      }
      ok = false;
    }
  }
  CHECK_MESSAGE(ok, what << ": element " << worst << " gpu " << (gpu.empty() ? 0.f : gpu[worst]) << " cpu "
                         << (cpu.empty() ? 0.f : cpu[worst]) << " bound " << (bound.empty() ? 0.0 : bound[worst]));
}

void check_abs(const VecF& gpu, const VecF& cpu, double tol, const std::string& what) {
  check_within(gpu, cpu, VecD(cpu.size(), tol), what);
}

// Relative to each reference value, plus `floor` for values near 0.
void check_rel(const VecF& gpu, const VecF& cpu, double rel, const std::string& what, double floor = 1e-30) {
  VecD bound(cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) bound[i] = rel * std::abs(double(cpu[i])) + floor;
  check_within(gpu, cpu, bound, what);
}

// Bit-identical (NaN == NaN when the payload matches).
template <typename T>
void check_bits(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  REQUIRE(a.size() == b.size());
  CHECK_MESSAGE(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0, what << ": not bit-identical");
}

// A sum over k of per-channel terms, computed in double by both twins: the fp32 channel weight may differ by one
// rounding (2^-24 relative, the double sums are reassociated) and the output rounding adds 2^-24 |cam|, so the
// difference is at most ~2^-23 sum_k |term_k|. 1e-6 * sum|terms| leaves 8x headroom and catches any wrong term.
constexpr double kSumRel = 1e-6;
// One fp32 rounding apart (2^-23 relative, with headroom): values the twins form from the same double.
constexpr double kUlpRel = 2.5e-7;
// Spec tolerances on normalized maps (docs/cam-spec.md, "Numerical tolerances").
constexpr double kSpecGradient = 1e-4, kSpecDivision = 1e-3;
// Maps in [0, 1] made by the same fp32 operations on both sides; the CPU compiler may contract a*b + c into an
// FMA where the GPU kernels use _rn intrinsics, a few ulps of 1.0.
constexpr double kSameOps = 1e-6;

VecD sum_bound(const VecF& terms_abs_sum, double rel) {  // rel * sum|terms| per position
  VecD b(terms_abs_sum.size());
  for (size_t i = 0; i < b.size(); ++i) b[i] = rel * terms_abs_sum[i] + 1e-30;
  return b;
}

// sum_k |term_bkz| for each (b, z).
VecF abs_channel_sum(const VecF& terms, const Dims& d) {
  VecF s(static_cast<size_t>(d.B * d.Z()), 0.f);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t z = 0; z < d.Z(); ++z) s[b * d.Z() + z] += std::abs(terms[(b * d.K + k) * d.Z() + z]);
  return s;
}

const GradCamVariant kVariants[] = {GradCamVariant::GradCam,         GradCamVariant::GradCamNeg,
                                    GradCamVariant::HiResCam,        GradCamVariant::GradCamElementwise,
                                    GradCamVariant::GradCamPlusPlus, GradCamVariant::XGradCam,
                                    GradCamVariant::LayerCam};

// CPU post-processing (steps 1-3) of a raw map; cam is copied (the CPU twin normalizes in place).
VecF cpu_postprocess(VecF cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, bool relu) {
  VecF out(static_cast<size_t>(B * H * W));
  postprocess_layer(out.data(), cam.data(), B, h, w, H, W, relu, pool());
  return out;
}

VecF gpu_postprocess(CudaRuntime& rt, const DeviceBuffer& cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W,
                     bool relu) {
  DeviceBuffer out = device_buffer(rt, static_cast<size_t>(B * H * W) * sizeof(float));
  cuda::postprocess_layer(f32(out), f32(cam), B, h, w, H, W, relu, rt.stream());
  return download<float>(rt, out, static_cast<size_t>(B * H * W));
}

// Activations with a controlled spectrum after centring: A_b = sum_i s_i u_i v_i^T + per-channel offsets, with
// u_i orthonormal and orthogonal to the ones vector (so centring leaves them), v_i orthonormal. Singular values
// are exactly s (up to the fp32 rounding of A, which both twins see alike).
VecF spectral_activations(const Dims& d, const VecD& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  const int64_t K = d.K, Z = d.Z();
  const int64_t r = std::min<int64_t>({static_cast<int64_t>(s.size()), K, Z - 1});
  auto orthonormal = [&](int64_t len, int64_t count, bool against_ones) {
    std::vector<VecD> cols;
    if (against_ones) cols.push_back(VecD(static_cast<size_t>(len), 1.0 / std::sqrt(double(len))));
    const size_t skip = cols.size();
    while (static_cast<int64_t>(cols.size() - skip) < count) {
      VecD c(static_cast<size_t>(len));
      for (double& x : c) x = nd(rng);
      for (int pass = 0; pass < 2; ++pass)
        for (const VecD& q : cols) {
          double dot = 0;
          for (int64_t i = 0; i < len; ++i) dot += q[i] * c[i];
          for (int64_t i = 0; i < len; ++i) c[i] -= dot * q[i];
        }
      double nrm = 0;
      for (double x : c) nrm += x * x;
      nrm = std::sqrt(nrm);
      for (double& x : c) x /= nrm;
      cols.push_back(c);
    }
    return std::vector<VecD>(cols.begin() + skip, cols.end());
  };
  VecF A(d.numel());
  std::uniform_real_distribution<double> off(-2.0, 2.0);
  for (int64_t b = 0; b < d.B; ++b) {
    const std::vector<VecD> U = orthonormal(Z, r, true), V = orthonormal(K, r, false);
    for (int64_t k = 0; k < K; ++k) {
      const double offset = off(rng);
      for (int64_t z = 0; z < Z; ++z) {
        double v = offset;
        for (int64_t i = 0; i < r; ++i) v += s[i] * std::sqrt(double(K)) * U[i][z] * V[i][k];
        A[(b * K + k) * Z + z] = static_cast<float>(v);
      }
    }
  }
  return A;
}

}  // namespace
#endif  // CAMRT_WITH_CUDA

TEST_CASE("gpu cam: Grad-CAM variants (channel weights, fused forward, weighted activations, normalized maps)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 100;
  for (const Dims& d : shape_matrix()) {
    const VecF A = random_vector(d.numel(), ++seed), G = random_vector(d.numel(), ++seed);
    const DeviceBuffer dA = upload(rt, A), dG = upload(rt, G);
    for (GradCamVariant variant : kVariants) {
      const std::string what = "variant " + std::to_string(static_cast<int>(variant)) + " " + d.str();
      const size_t maps = static_cast<size_t>(d.B * d.Z());
      // CPU twin
      VecF cam(maps), terms(d.numel());
      grad_cam_forward(cam.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, variant, pool());
      grad_cam_weighted_activations(terms.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, variant, pool());
      // GPU
      Scratch scratch(rt, cuda::grad_cam_scratch_bytes(d.B, d.K, variant));
      DeviceBuffer dcam = device_buffer(rt, maps * sizeof(float));
      cuda::grad_cam_forward(f32(dcam), f32(dA), f32(dG), d.B, d.K, d.h, d.w, variant, scratch.ptr, scratch.bytes,
                             rt.stream());
      check_within(download<float>(rt, dcam, maps), cam, sum_bound(abs_channel_sum(terms, d), kSumRel),
                   "grad_cam_forward " + what);

      DeviceBuffer dterms = device_buffer(rt, d.numel() * sizeof(float));
      cuda::grad_cam_weighted_activations(f32(dterms), f32(dA), f32(dG), d.B, d.K, d.h, d.w, variant, scratch.ptr,
                                          scratch.bytes, rt.stream());
      // fp32 weight (one rounding apart) times A, or the same fp32 product for the spatial variants.
      check_rel(download<float>(rt, dterms, d.numel()), terms, kUlpRel, "grad_cam_weighted_activations " + what);

      if (grad_cam_has_channel_weights(variant)) {
        VecF weights(static_cast<size_t>(d.B * d.K));
        grad_cam_channel_weights(weights.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, variant, pool());
        DeviceBuffer dw = device_buffer(rt, weights.size() * sizeof(float));
        cuda::grad_cam_channel_weights(f32(dw), f32(dA), f32(dG), d.B, d.K, d.h, d.w, variant, rt.stream());
        // Both round the same double formula to fp32; the reassociated double sums differ by ~Z * 1e-16 relative,
        // amplified for XGrad-CAM by the cancellation in its denominator sum A (random signs): 1e-6 relative.
        check_rel(download<float>(rt, dw, weights.size()), weights, 1e-6, "grad_cam_channel_weights " + what);

        // In place (out == A), on a copy of A.
        DeviceBuffer dA2 = upload(rt, A);
        cuda::grad_cam_weighted_activations(f32(dA2), f32(dA2), f32(dG), d.B, d.K, d.h, d.w, variant, scratch.ptr,
                                            scratch.bytes, rt.stream());
        check_rel(download<float>(rt, dA2, d.numel()), terms, kUlpRel, "in-place weighted activations " + what);
      }

      // The spec's tolerance on the final normalized maps (post-processing run by each twin on its own map).
      const double spec = variant == GradCamVariant::GradCamPlusPlus ? kSpecDivision : kSpecGradient;
      for (auto [H, W] : kUpsampled)
        check_abs(gpu_postprocess(rt, dcam, d.B, d.h, d.w, H, W, true), cpu_postprocess(cam, d.B, d.h, d.w, H, W, true),
                  spec, "normalized map " + what);
    }
  }
#endif
}

TEST_CASE("gpu cam: weighted_channel_sum, scale_channels and elementwise_product in place, CAM with fc weights") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 300;
  for (const Dims& d : shape_matrix()) {
    const std::string what = d.str();
    const size_t maps = static_cast<size_t>(d.B * d.Z()), nw = static_cast<size_t>(d.B * d.K);
    const VecF A = random_vector(d.numel(), ++seed), weights = random_vector(nw, ++seed, -2.f, 2.f);
    const DeviceBuffer dA = upload(rt, A), dw = upload(rt, weights);

    VecF cam(maps), scaled(d.numel());
    weighted_channel_sum(cam.data(), weights.data(), A.data(), d.B, d.K, d.h, d.w, pool());
    scale_channels(scaled.data(), A.data(), weights.data(), d.B, d.K, d.h, d.w, pool());
    DeviceBuffer dcam = device_buffer(rt, maps * sizeof(float));
    cuda::weighted_channel_sum(f32(dcam), f32(dw), f32(dA), d.B, d.K, d.h, d.w, rt.stream());
    check_within(download<float>(rt, dcam, maps), cam, sum_bound(abs_channel_sum(scaled, d), kSumRel),
                 "weighted_channel_sum " + what);

    DeviceBuffer dA2 = upload(rt, A);  // in place: out == A; one fp32 product each, identical
    cuda::scale_channels(f32(dA2), f32(dA2), f32(dw), d.B, d.K, d.h, d.w, rt.stream());
    check_bits(download<float>(rt, dA2, d.numel()), scaled, "scale_channels in place " + what);

    const VecF G = random_vector(d.numel(), ++seed);
    VecF product(d.numel());
    elementwise_product(product.data(), G.data(), A.data(), static_cast<int64_t>(d.numel()), pool());
    DeviceBuffer dG = upload(rt, G);
    cuda::elementwise_product(f32(dG), f32(dG), f32(dA), static_cast<int64_t>(d.numel()), rt.stream());
    check_bits(download<float>(rt, dG, d.numel()), product, "elementwise_product in place " + what);

    // CAM: W (5 x K), classes chosen per image; a class outside [0, 5) gives a NaN map on the GPU.
    const int64_t C = 5;
    const VecF fc = random_vector(static_cast<size_t>(C * d.K), ++seed);
    std::vector<int64_t> classes(static_cast<size_t>(d.B));
    for (int64_t b = 0; b < d.B; ++b) classes[b] = (3 * b + 4) % C;
    VecF cam_fc(maps), fc_terms(d.numel());
    class_activation_map(cam_fc.data(), fc.data(), classes.data(), A.data(), d.B, d.K, d.h, d.w, C, pool());
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t k = 0; k < d.K; ++k)
        for (int64_t z = 0; z < d.Z(); ++z)
          fc_terms[(b * d.K + k) * d.Z() + z] = fc[classes[b] * d.K + k] * A[(b * d.K + k) * d.Z() + z];
    const DeviceBuffer dfc = upload(rt, fc), dclasses = upload(rt, classes);
    cuda::class_activation_map(f32(dcam), f32(dfc), reinterpret_cast<const int64_t*>(dclasses.data()), f32(dA), d.B,
                               d.K, d.h, d.w, C, rt.stream());
    check_within(download<float>(rt, dcam, maps), cam_fc, sum_bound(abs_channel_sum(fc_terms, d), kSumRel),
                 "class_activation_map " + what);
    classes[0] = C;  // out of range
    const DeviceBuffer dbad = upload(rt, classes);
    cuda::class_activation_map(f32(dcam), f32(dfc), reinterpret_cast<const int64_t*>(dbad.data()), f32(dA), d.B, d.K,
                               d.h, d.w, C, rt.stream());
    const VecF bad = download<float>(rt, dcam, maps);
    CHECK(std::all_of(bad.begin(), bad.begin() + d.Z(), [](float v) { return std::isnan(v); }));
    if (d.B > 1) CHECK(std::isfinite(bad[d.Z()]));
  }
#endif
}

TEST_CASE("gpu cam: NormGrad and Smooth Grad-CAM++ (accumulate, weights, forward)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 500;
  for (const Dims& d : shape_matrix()) {
    const std::string what = d.str();
    const size_t maps = static_cast<size_t>(d.B * d.Z()), n = d.numel();
    const VecF A = random_vector(n, ++seed), G = random_vector(n, ++seed);
    const DeviceBuffer dA = upload(rt, A), dG = upload(rt, G);

    VecF cam(maps);
    normgrad_forward(cam.data(), A.data(), G.data(), d.B, d.K, d.h, d.w, pool());
    DeviceBuffer dcam = device_buffer(rt, maps * sizeof(float));
    cuda::normgrad_forward(f32(dcam), f32(dA), f32(dG), d.B, d.K, d.h, d.w, rt.stream());
    // Two non-negative double sums (reassociated, ~K * 1e-16 relative), sqrt, product, one fp32 rounding.
    check_rel(download<float>(rt, dcam, maps), cam, kUlpRel, "normgrad_forward " + what);
    for (auto [H, W] : kUpsampled)
      check_abs(gpu_postprocess(rt, dcam, d.B, d.h, d.w, H, W, false), cpu_postprocess(cam, d.B, d.h, d.w, H, W, false),
                kSpecGradient, "NormGrad normalized map " + what);

    // Smooth Grad-CAM++: 3 noisy gradients accumulated on both sides, divided by 3 on the host, then weights.
    VecF D1(n, 0.f), D2(n, 0.f), D3(n, 0.f);
    DeviceBuffer dD1 = device_buffer(rt, n * sizeof(float)), dD2 = device_buffer(rt, n * sizeof(float)),
                 dD3 = device_buffer(rt, n * sizeof(float));
    for (int s = 0; s < 3; ++s) {
      const VecF Gs = random_vector(n, ++seed);
      smooth_gradcampp_accumulate(D1.data(), D2.data(), D3.data(), Gs.data(), static_cast<int64_t>(n), pool());
      const DeviceBuffer dGs = upload(rt, Gs);
      cuda::smooth_gradcampp_accumulate(f32(dD1), f32(dD2), f32(dD3), f32(dGs), static_cast<int64_t>(n), rt.stream());
    }
    // Each step rounds the same double sum to fp32 (the CPU compiler may fuse D2 + g*g): one rounding apart per
    // step, compared after three steps against 3 ulps.
    const VecF g1 = download<float>(rt, dD1, n), g2 = download<float>(rt, dD2, n), g3 = download<float>(rt, dD3, n);
    check_rel(g1, D1, 3 * kUlpRel, "smooth D1 " + what, 1e-7);
    check_rel(g2, D2, 3 * kUlpRel, "smooth D2 " + what, 1e-7);
    check_rel(g3, D3, 3 * kUlpRel, "smooth D3 " + what, 1e-7);
    for (VecF* D : {&D1, &D2, &D3})
      for (float& x : *D) x /= 3.f;
    const DeviceBuffer m1 = upload(rt, D1), m2 = upload(rt, D2), m3 = upload(rt, D3);
    VecF weights(static_cast<size_t>(d.B * d.K)), scam(maps);
    smooth_gradcampp_channel_weights(weights.data(), A.data(), D1.data(), D2.data(), D3.data(), d.B, d.K, d.h, d.w,
                                     pool());
    smooth_gradcampp_forward(scam.data(), A.data(), D1.data(), D2.data(), D3.data(), d.B, d.K, d.h, d.w, pool());
    DeviceBuffer dw = device_buffer(rt, weights.size() * sizeof(float));
    cuda::smooth_gradcampp_channel_weights(f32(dw), f32(dA), f32(m1), f32(m2), f32(m3), d.B, d.K, d.h, d.w,
                                           rt.stream());
    // Non-negative terms summed in double: one fp32 rounding apart.
    check_rel(download<float>(rt, dw, weights.size()), weights, kUlpRel, "smooth weights " + what);
    Scratch scratch(rt, cuda::smooth_gradcampp_scratch_bytes(d.B, d.K));
    cuda::smooth_gradcampp_forward(f32(dcam), f32(dA), f32(m1), f32(m2), f32(m3), d.B, d.K, d.h, d.w, scratch.ptr,
                                   scratch.bytes, rt.stream());
    VecF terms(n);
    scale_channels(terms.data(), A.data(), weights.data(), d.B, d.K, d.h, d.w, pool());
    check_within(download<float>(rt, dcam, maps), scam, sum_bound(abs_channel_sum(terms, d), kSumRel),
                 "smooth_gradcampp_forward " + what);
  }
#endif
}

TEST_CASE("gpu cam: Eigen-CAM and EigenGrad-CAM, both Gram orientations, close singular values, zero matrix") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 700;
  // Singular values 3 : 1 : 0.5 (well separated), and 3 : 2.997 (eigenvalues 9 : 8.98, a 0.2% gap that plain
  // power iteration would need ~1e4 steps for; the repeated squares need ~14).
  const VecD spectra[] = {{3.0, 1.0, 0.5}, {3.0, 2.997, 1.0, 0.5}};
  // The matrix, plus Gram orders over one 64-wide tile: 100 (K x K, length 130) and 196 (Z x Z, 4 x 4 tiles).
  std::vector<Dims> shapes = shape_matrix();
  shapes.push_back({2, 100, 10, 13});
  shapes.push_back({3, 300, 14, 14});
  for (const Dims& d : shapes)
    for (const VecD& s : spectra) {
      const std::string what = d.str() + " s2=" + std::to_string(s[1]);
      const size_t maps = static_cast<size_t>(d.B * d.Z());
      VecF A = spectral_activations(d, s, ++seed);
      if (d.B == 3)  // image 2: every channel constant, C == 0, cam == 0 on both sides
        for (int64_t i = 2 * d.K * d.Z(); i < 3 * d.K * d.Z(); ++i) A[i] = 0.25f * float(i / d.Z() % 5);
      VecF cam(maps);
      eigen_cam_forward(cam.data(), A.data(), d.B, d.K, d.h, d.w, pool(), nullptr);
      const DeviceBuffer dA = upload(rt, A);
      Scratch scratch(rt, cuda::eigen_cam_scratch_bytes(d.B, d.K, d.h, d.w));
      DeviceBuffer dcam = device_buffer(rt, maps * sizeof(float));
      cuda::eigen_cam_forward(f32(dcam), f32(dA), d.B, d.K, d.h, d.w, scratch.ptr, scratch.bytes, rt.stream());
      const VecF gpu = download<float>(rt, dcam, maps);
      // Per image up to sign (the spec's rule for Eigen-CAM). Both solvers reach ~1e-13 on these spectra (error
      // ~ 1e-16 ||C|| / gap, gap >= 0.2%); 1e-5 of the map's largest value covers the fp32 output and the
      // reassociated double Gram sums with room, while a wrong vector is off by O(1).
      VecF aligned = cam;
      for (int64_t b = 0; b < d.B; ++b) {
        double same = 0, flip = 0, scale = 0;
        for (int64_t z = 0; z < d.Z(); ++z) {
          const double g = gpu[b * d.Z() + z], c = cam[b * d.Z() + z];
          same = std::max(same, std::abs(g - c));
          flip = std::max(flip, std::abs(g + c));
          scale = std::max(scale, std::abs(c));
        }
        if (flip < same)
          for (int64_t z = 0; z < d.Z(); ++z) aligned[b * d.Z() + z] = -aligned[b * d.Z() + z];
        CHECK_MESSAGE(std::min(same, flip) <= 1e-5 * scale + 1e-30,
                      "eigen_cam_forward " << what << " image " << b << ": max diff " << std::min(same, flip)
                                           << " of " << scale);
        // The sign rule is shared and these maps keep sum cam * sum_k A far from 0, so the signs also agree.
        CHECK_MESSAGE(same <= flip, "eigen_cam_forward sign " << what << " image " << b);
        if (b == 2) CHECK(std::all_of(gpu.begin() + 2 * d.Z(), gpu.end(), [](float v) { return v == 0.f; }));
      }
      for (auto [H, W] : kUpsampled)
        check_abs(gpu_postprocess(rt, dcam, d.B, d.h, d.w, H, W, true), cpu_postprocess(aligned, d.B, d.h, d.w, H, W, true),
                  kSpecGradient, "Eigen-CAM normalized map " + what);

      // EigenGrad-CAM: the same projection of G * A (product on the device, in place into a copy of G).
      const VecF G = random_vector(d.numel(), ++seed, 0.5f, 1.5f);  // positive: keeps the planted spectrum dominant
      VecF GA(d.numel());
      elementwise_product(GA.data(), G.data(), A.data(), static_cast<int64_t>(d.numel()), pool());
      eigen_cam_forward(cam.data(), GA.data(), d.B, d.K, d.h, d.w, pool(), nullptr);
      DeviceBuffer dGA = upload(rt, G);
      cuda::elementwise_product(f32(dGA), f32(dGA), f32(dA), static_cast<int64_t>(d.numel()), rt.stream());
      cuda::eigen_cam_forward(f32(dcam), f32(dGA), d.B, d.K, d.h, d.w, scratch.ptr, scratch.bytes, rt.stream());
      const VecF gpu_ga = download<float>(rt, dcam, maps);
      for (int64_t b = 0; b < d.B; ++b) {
        double same = 0, flip = 0, scale = 0;
        for (int64_t z = 0; z < d.Z(); ++z) {
          const double g = gpu_ga[b * d.Z() + z], c = cam[b * d.Z() + z];
          same = std::max(same, std::abs(g - c));
          flip = std::max(flip, std::abs(g + c));
          scale = std::max(scale, std::abs(c));
        }
        // G * A perturbs the planted spectrum (gap no longer guaranteed): 1e-4 of the map, the spec's tolerance.
        CHECK_MESSAGE(std::min(same, flip) <= 1e-4 * scale + 1e-30,
                      "EigenGrad-CAM " << what << " image " << b << ": max diff " << std::min(same, flip) << " of "
                                       << scale);
      }
    }
#endif
}

TEST_CASE("gpu cam: bilinear resize, min-max normalize, post-processing, aggregation, tanh, guided Grad-CAM") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  // Same fp32 operations as the CPU twin throughout (kSameOps), so the bounds are far below the spec's 1e-4.
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 900;
  for (const Dims& d : shape_matrix()) {
    const std::string what = d.str();
    const int64_t planes = d.B * d.K;
    const VecF in = random_vector(d.numel(), ++seed, -3.f, 3.f);
    const DeviceBuffer din = upload(rt, in);
    // Up to odd sizes, down, and to 1 x 1; both corner conventions.
    const std::pair<int64_t, int64_t> sizes[] = {{17, 23}, {31, 29}, {3, 2}, {1, 1}, {d.h, d.w}};
    for (auto [H, W] : sizes)
      for (bool ac : {false, true}) {
        const size_t n = static_cast<size_t>(planes * H * W);
        VecF out(n);
        bilinear_resize(out.data(), in.data(), planes, d.h, d.w, H, W, ac, pool());
        DeviceBuffer dout = device_buffer(rt, n * sizeof(float));
        cuda::bilinear_resize(f32(dout), f32(din), planes, d.h, d.w, H, W, ac, rt.stream());
        check_abs(download<float>(rt, dout, n), out, 3.0 * kSameOps,
                  "bilinear_resize " + what + " -> " + std::to_string(H) + "x" + std::to_string(W));
      }

    // One raw map per image; image 0 of a B = 3 batch is constant (normalizes to 0).
    const size_t maps = static_cast<size_t>(d.B * d.Z());
    VecF cam = random_vector(maps, ++seed, -1.f, 2.f);
    if (d.B == 3) std::fill(cam.begin(), cam.begin() + d.Z(), 0.7f);
    const DeviceBuffer dcam = upload(rt, cam);
    for (auto [H, W] : kUpsampled)
      for (bool relu : {true, false}) {
        check_abs(gpu_postprocess(rt, dcam, d.B, d.h, d.w, H, W, relu), cpu_postprocess(cam, d.B, d.h, d.w, H, W, relu),
                  kSameOps, "postprocess_layer " + what);
      }
    CHECK(download<float>(rt, dcam, maps) == cam);  // the GPU twin leaves cam unchanged

    VecF norm = cam;
    minmax_normalize(norm.data(), d.B, d.Z(), pool());
    DeviceBuffer dnorm = upload(rt, cam);
    cuda::minmax_normalize(f32(dnorm), d.B, d.Z(), rt.stream());
    check_abs(download<float>(rt, dnorm, maps), norm, kSameOps, "minmax_normalize " + what);

    VecF relu = cam;
    relu_inplace(relu.data(), static_cast<int64_t>(maps));
    DeviceBuffer drelu = upload(rt, cam);
    cuda::relu_inplace(f32(drelu), static_cast<int64_t>(maps), rt.stream());
    check_bits(download<float>(rt, drelu, maps), relu, "relu_inplace " + what);

    VecF tanh_maps = cam;
    for (int64_t z = 0; z < d.Z(); ++z) tanh_maps[z] = -std::abs(tanh_maps[z]);  // max <= 0: left as is
    DeviceBuffer dtanh = upload(rt, tanh_maps);
    layercam_tanh_scale(tanh_maps.data(), d.B, d.Z(), pool());
    cuda::layercam_tanh_scale(f32(dtanh), d.B, d.Z(), rt.stream());
    // tanh in double on both sides (libm and CUDA, each within 2 ulp of double), rounded to fp32.
    check_abs(download<float>(rt, dtanh, maps), tanh_maps, kSameOps, "layercam_tanh_scale " + what);

    for (int64_t L : {1, 3}) {
      const int64_t H = 17, W = 23;
      const size_t n = static_cast<size_t>(d.B * H * W);
      const VecF per_layer = random_vector(static_cast<size_t>(L) * n, ++seed, -0.5f, 1.f);
      VecF out(n);
      aggregate_layers(out.data(), per_layer.data(), L, d.B, H, W, pool());
      const DeviceBuffer dpl = upload(rt, per_layer);
      DeviceBuffer dout = device_buffer(rt, n * sizeof(float));
      cuda::aggregate_layers(f32(dout), f32(dpl), L, d.B, H, W, rt.stream());
      check_abs(download<float>(rt, dout, n), out, kSameOps, "aggregate_layers L=" + std::to_string(L) + " " + what);
    }

    const int64_t C = 3, H = 17, W = 23;
    const VecF guided = random_vector(static_cast<size_t>(d.B * C * H * W), ++seed);
    const VecF final_map = random_vector(static_cast<size_t>(d.B * H * W), ++seed, 0.f, 1.f);
    VecF combined(guided.size());
    guided_gradcam(combined.data(), guided.data(), final_map.data(), d.B, C, H, W, pool());
    const DeviceBuffer dg = upload(rt, guided), dm = upload(rt, final_map);
    DeviceBuffer dc = device_buffer(rt, guided.size() * sizeof(float));
    cuda::guided_gradcam(f32(dc), f32(dg), f32(dm), d.B, C, H, W, rt.stream());
    check_bits(download<float>(rt, dc, guided.size()), combined, "guided_gradcam " + what);
  }
#endif
}

TEST_CASE("gpu cam: Score-CAM helpers (masks, masked inputs, softmax, constant channels, paper weights)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 1100;
  for (const Dims& d : shape_matrix()) {
    const std::string what = d.str();
    VecF A = random_vector(d.numel(), ++seed, -1.f, 3.f);
    // Channel 0 of the last image dead (all 0, as after a ReLU): upsampled exactly, its mask is 0, and it is
    // flagged for the paper variant. (A constant c != 0 upsamples to c +- 1 ulp, which the normalization blows
    // up to noise in [0, 1] that depends on FMA contraction: the CPU compiler's choice, not comparable.)
    std::fill(A.end() - d.K * d.Z(), A.end() - (d.K - 1) * d.Z(), 0.f);
    const DeviceBuffer dA = upload(rt, A);
    for (auto [H, W] : kUpsampled) {
      const size_t n = static_cast<size_t>(d.B * d.K * H * W);
      VecF masks(n);
      scorecam_masks(masks.data(), A.data(), d.B, d.K, d.h, d.w, H, W, pool());
      DeviceBuffer dmasks = device_buffer(rt, n * sizeof(float));
      cuda::scorecam_masks(f32(dmasks), f32(dA), d.B, d.K, d.h, d.w, H, W, rt.stream());
      const VecF gpu_masks = download<float>(rt, dmasks, n);
      // Same fp32 resize and normalization; divided by max - min (~4 here), a few ulps of values in [0, 1].
      check_abs(gpu_masks, masks, 1e-5, "scorecam_masks " + what);

      // Masked inputs of image B-1's channels, from the CPU masks on both sides: one fp32 product, identical.
      const int64_t C = 3;
      const VecF x = random_vector(static_cast<size_t>(C * H * W), ++seed);
      const float* image_masks = masks.data() + (d.B - 1) * d.K * H * W;
      VecF masked(static_cast<size_t>(d.K * C * H * W));
      apply_mask(masked.data(), x.data(), image_masks, d.K, C, H, W, pool());
      const DeviceBuffer dx = upload(rt, x), dm = upload(rt, VecF(image_masks, image_masks + d.K * H * W));
      DeviceBuffer dmasked = device_buffer(rt, masked.size() * sizeof(float));
      cuda::apply_mask(f32(dmasked), f32(dx), f32(dm), d.K, C, H, W, rt.stream());
      check_bits(download<float>(rt, dmasked, masked.size()), masked, "apply_mask " + what);
    }

    const size_t nw = static_cast<size_t>(d.B * d.K);
    const VecF scores = random_vector(nw, ++seed, -10.f, 10.f);
    VecF w(nw);
    softmax_weights(w.data(), scores.data(), d.B, d.K);
    const DeviceBuffer dscores = upload(rt, scores);
    DeviceBuffer dw = device_buffer(rt, nw * sizeof(float));
    cuda::softmax_weights(f32(dw), f32(dscores), d.B, d.K, rt.stream());
    // exp in double on both sides (within 2 ulp of double), sums reassociated, then rounded to fp32.
    check_rel(download<float>(rt, dw, nw), w, kUlpRel, "softmax_weights " + what, 1e-12);

    // Constant-channel flags on A with one more constant (non-zero) plane: channel K-1 of image 0.
    std::fill(A.begin() + (d.K - 1) * d.Z(), A.begin() + d.K * d.Z(), 1.5f);
    const DeviceBuffer dA2 = upload(rt, A);
    std::vector<uint8_t> constant(nw);
    scorecam_constant_channels(constant.data(), A.data(), d.B, d.K, d.h, d.w, pool());
    CHECK(constant[(d.B - 1) * d.K] == 1);
    CHECK(constant[d.K - 1] == 1);
    DeviceBuffer dconst = device_buffer(rt, nw);
    cuda::scorecam_constant_channels(reinterpret_cast<uint8_t*>(dconst.data()), f32(dA2), d.B, d.K, d.h, d.w,
                                     rt.stream());
    check_bits(download<uint8_t>(rt, dconst, nw), constant, "scorecam_constant_channels " + what);

    VecF paper(nw);
    scorecam_paper_weights(paper.data(), w.data(), constant.data(), d.B, d.K);
    const DeviceBuffer dprobs = upload(rt, w);
    cuda::scorecam_paper_weights(f32(dw), f32(dprobs), reinterpret_cast<const uint8_t*>(dconst.data()), d.B, d.K,
                                 rt.stream());
    check_bits(download<float>(rt, dw, nw), paper, "scorecam_paper_weights " + what);
  }
#endif
}

TEST_CASE("gpu cam: Ablation-CAM helpers (values, ablated copies on the device, weights)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  uint32_t seed = 1300;
  for (const Dims& d : shape_matrix()) {
    const std::string what = d.str();
    VecF A = random_vector(d.numel(), ++seed, -1.f, 1.f);
    // Image 0 after a ReLU (min exactly 0 -> value 0); the others keep negative minima (-> min - 1e7).
    for (int64_t i = 0; i < d.K * d.Z(); ++i) A[i] = std::max(A[i], 0.f);
    A[0] = 0.f;
    VecF values(static_cast<size_t>(d.B));
    ablation_values(values.data(), A.data(), d.B, d.K, d.h, d.w, pool());
    const DeviceBuffer dA = upload(rt, A);
    DeviceBuffer dvalues = device_buffer(rt, values.size() * sizeof(float));
    cuda::ablation_values(f32(dvalues), f32(dA), d.B, d.K, d.h, d.w, rt.stream());
    check_bits(download<float>(rt, dvalues, values.size()), values, "ablation_values " + what);  // min is exact
    CHECK(values[0] == 0.f);

    // All K ablated copies of each image in two chunks, value read from the device array.
    const int64_t KZ = d.K * d.Z();
    for (int64_t b = 0; b < d.B; ++b)
      for (auto [k0, n] : {std::pair<int64_t, int64_t>{0, (d.K + 1) / 2}, {(d.K + 1) / 2, d.K / 2}}) {
        VecF copies(static_cast<size_t>(n * KZ));
        ablation_batch(copies.data(), A.data() + b * KZ, values[b], k0, n, d.K, d.h, d.w, pool());
        DeviceBuffer dcopies = device_buffer(rt, copies.size() * sizeof(float));
        cuda::ablation_batch(f32(dcopies), f32(dA) + b * KZ, f32(dvalues) + b, k0, n, d.K, d.h, d.w, rt.stream());
        check_bits(download<float>(rt, dcopies, copies.size()), copies, "ablation_batch " + what);
      }

    VecF y = random_vector(static_cast<size_t>(d.B), ++seed, 1.f, 5.f);
    const VecF y_ablated = random_vector(static_cast<size_t>(d.B * d.K), ++seed, -5.f, 5.f);
    VecF w(static_cast<size_t>(d.B * d.K));
    ablation_weights(w.data(), y.data(), y_ablated.data(), d.B, d.K);
    const DeviceBuffer dy = upload(rt, y), dya = upload(rt, y_ablated);
    DeviceBuffer dw = device_buffer(rt, w.size() * sizeof(float));
    cuda::ablation_weights(f32(dw), f32(dy), f32(dya), d.B, d.K, rt.stream());
    check_bits(download<float>(rt, dw, w.size()), w, "ablation_weights " + what);  // IEEE double ops, identical
    y[0] = 0.f;  // the CPU twin throws; the GPU writes NaN for that image only
    CHECK_THROWS_AS(ablation_weights(w.data(), y.data(), y_ablated.data(), d.B, d.K), Error);
    const DeviceBuffer dy0 = upload(rt, y);
    cuda::ablation_weights(f32(dw), f32(dy0), f32(dya), d.B, d.K, rt.stream());
    const VecF w0 = download<float>(rt, dw, w.size());
    CHECK(std::all_of(w0.begin(), w0.begin() + d.K, [](float v) { return std::isnan(v); }));
    if (d.B > 1) CHECK(std::isfinite(w0[d.K]));
  }
#endif
}

TEST_CASE("gpu cam: targets ranked and seeded on the device (ties, NaN, -inf, fixed class, softmax)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t C : {5, 1000}) {
    const int64_t B = 3, T = std::min<int64_t>(C, 7), S = 4;
    VecF logits = random_vector(static_cast<size_t>(B * C), 1700 + uint32_t(C), -3.f, 3.f);
    logits[1] = logits[3] = 5.f;           // a tie at the top of image 0
    logits[C + 0] = nan;                   // image 1: NaN, -inf
    logits[C + 2] = -inf;
    for (int64_t j = 0; j < C; ++j) logits[2 * C + j] = 0.25f;  // image 2: all equal
    const std::string what = "C=" + std::to_string(C);
    const DeviceBuffer dlogits = upload(rt, logits);
    for (int64_t fixed : {int64_t(-1), C - 1}) {
      const int64_t targets = fixed >= 0 ? 1 : T;
      std::vector<int64_t> cpu(static_cast<size_t>(targets * B));
      rank_targets(cpu.data(), logits.data(), B, C, targets, fixed);
      DeviceBuffer dclasses = device_buffer(rt, cpu.size() * sizeof(int64_t));
      auto* classes = reinterpret_cast<int64_t*>(dclasses.data());
      cuda::rank_targets(classes, f32(dlogits), B, C, targets, fixed, rt.stream());
      CHECK_MESSAGE(download<int64_t>(rt, dclasses, cpu.size()) == cpu, "rank_targets " << what << " fixed " << fixed);
      for (bool softmax : {false, true}) {
        const int64_t first = targets > 1 ? 1 : 0, count = std::min<int64_t>(targets - first, S - 1);
        VecF expected(static_cast<size_t>(S * B * C));
        target_seeds(expected.data(), cpu.data(), logits.data(), B, C, first, count, S, softmax);
        DeviceBuffer dseeds = device_buffer(rt, expected.size() * sizeof(float));
        cuda::target_seeds(f32(dseeds), classes, f32(dlogits), B, C, first, count, S, softmax, rt.stream());
        const VecF got = download<float>(rt, dseeds, expected.size());
        if (!softmax) {
          check_bits(got, expected, "one-hot seeds " + what);
          continue;
        }
        // Image 1's NaN logit makes its softmax NaN on both devices; compare the other images' rows.
        for (int64_t s = 0; s < S; ++s)
          for (int64_t b : {0, 2}) {
            const size_t row = static_cast<size_t>((s * B + b) * C);
            const VecF g(got.begin() + row, got.begin() + row + C), e(expected.begin() + row, expected.begin() + row + C);
            check_rel(g, e, 1e-6, "softmax seeds " + what, 1e-12);  // double math, float results: an ulp or two
          }
      }
    }
  }
#endif
}

TEST_CASE("gpu cam: target_scores (logit, softmax, one class or one per row) equals the CPU twin") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  for (int64_t C : {5, 1000}) {
    const int64_t rows = 37;
    const VecF logits = random_vector(static_cast<size_t>(rows * C), 1800 + uint32_t(C), -4.f, 4.f);
    std::vector<int64_t> classes(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) classes[r] = (r * 7) % C;
    const DeviceBuffer dlogits = upload(rt, logits), dclasses = upload(rt, classes);
    for (int64_t stride : {0, 1})
      for (bool softmax : {false, true}) {
        VecF expected(static_cast<size_t>(rows));
        target_scores(expected.data(), logits.data(), classes.data(), stride, rows, C, softmax);
        DeviceBuffer dscores = device_buffer(rt, expected.size() * sizeof(float));
        cuda::target_scores(f32(dscores), f32(dlogits), reinterpret_cast<const int64_t*>(dclasses.data()), stride, rows,
                            C, softmax, rt.stream());
        const VecF got = download<float>(rt, dscores, expected.size());
        const std::string what = "target_scores C=" + std::to_string(C) + " stride " + std::to_string(stride);
        if (softmax) check_rel(got, expected, 1e-6, what + " softmax", 1e-12);
        else check_bits(got, expected, what);
      }
  }
#endif
}

TEST_CASE("gpu cam: Smooth Grad-CAM++ noise scale and noisy copies equal the CPU twins bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  const int64_t B = 4, N = 2, plane = 3 * 17 * 23, samples = 5, S = 3;
  const VecF x = random_vector(static_cast<size_t>(B * plane), 1900, -2.f, 3.f);
  const VecF z = random_vector(static_cast<size_t>(samples * N * plane), 1901, -3.f, 3.f);
  VecF sigma(static_cast<size_t>(B));
  smooth_noise_sigma(sigma.data(), x.data(), B, plane);
  const DeviceBuffer dx = upload(rt, x), dz = upload(rt, z);
  DeviceBuffer dsigma = device_buffer(rt, sigma.size() * sizeof(float));
  cuda::smooth_noise_sigma(f32(dsigma), f32(dx), B, plane, rt.stream());
  check_bits(download<float>(rt, dsigma, sigma.size()), sigma, "smooth_noise_sigma");
  {  // NaN pixels (first of image 1, last of image 2) make those sigmas NaN, as on the CPU; fminf alone skips them
    VecF with_nan = x;
    with_nan[size_t(plane)] = NAN;
    with_nan[size_t(3 * plane - 1)] = NAN;
    const DeviceBuffer dnan = upload(rt, with_nan);
    DeviceBuffer dnan_sigma = device_buffer(rt, sigma.size() * sizeof(float));  // dsigma stays the clean one
    cuda::smooth_noise_sigma(f32(dnan_sigma), f32(dnan), B, plane, rt.stream());
    const VecF got = download<float>(rt, dnan_sigma, sigma.size());
    CHECK(got[0] == sigma[0]);
    CHECK(std::isnan(got[1]));
    CHECK(std::isnan(got[2]));
    CHECK(got[3] == sigma[3]);
  }
  for (bool scaled : {true, false})
    for (int64_t count : {int64_t(3), int64_t(2)}) {  // a full pass and a partial last one (sample 3 of 5)
      const int64_t first = count == 3 ? 0 : 3;
      VecF expected(static_cast<size_t>(S * B * plane));
      smooth_noisy_copies(expected.data(), x.data(), z.data(), sigma.data(), first, count, S, B, N, plane, scaled, pool());
      DeviceBuffer dout = device_buffer(rt, expected.size() * sizeof(float));
      cuda::smooth_noisy_copies(f32(dout), f32(dx), f32(dz), f32(dsigma), first, count, S, B, N, plane, scaled, rt.stream());
      check_bits(download<float>(rt, dout, expected.size()), expected,
                 std::string("smooth_noisy_copies scaled ") + (scaled ? "yes" : "no") + " count " + std::to_string(count));
    }
#endif
}

TEST_CASE("gpu cam: two runs give bit-identical results") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  const Dims shapes[] = {{3, 64, 7, 7}, {3, 64, 9, 12}, {2, 300, 14, 14}};  // last: K > Z = 196, 4 Gram tiles
  uint32_t seed = 1500;
  for (const Dims& d : shapes) {
    const std::string what = d.str();
    const size_t maps = static_cast<size_t>(d.B * d.Z());
    const VecF A = random_vector(d.numel(), ++seed), G = random_vector(d.numel(), ++seed);
    const DeviceBuffer dA = upload(rt, A), dG = upload(rt, G);
    auto twice = [&](const char* name, auto&& run, size_t count) {
      DeviceBuffer first = device_buffer(rt, count * sizeof(float)), second = device_buffer(rt, count * sizeof(float));
      run(f32(first));
      run(f32(second));
      check_bits(download<float>(rt, first, count), download<float>(rt, second, count), std::string(name) + " " + what);
    };
    for (GradCamVariant variant : kVariants) {
      Scratch scratch(rt, cuda::grad_cam_scratch_bytes(d.B, d.K, variant));
      twice(
          "grad_cam_forward",
          [&](float* out) {
            cuda::grad_cam_forward(out, f32(dA), f32(dG), d.B, d.K, d.h, d.w, variant, scratch.ptr, scratch.bytes,
                                   rt.stream());
          },
          maps);
    }
    twice("normgrad_forward", [&](float* out) { cuda::normgrad_forward(out, f32(dA), f32(dG), d.B, d.K, d.h, d.w, rt.stream()); },
          maps);
    Scratch eigen(rt, cuda::eigen_cam_scratch_bytes(d.B, d.K, d.h, d.w));
    twice(
        "eigen_cam_forward",
        [&](float* out) { cuda::eigen_cam_forward(out, f32(dA), d.B, d.K, d.h, d.w, eigen.ptr, eigen.bytes, rt.stream()); },
        maps);
    twice(
        "postprocess_layer",
        [&](float* out) { cuda::postprocess_layer(out, f32(dA), d.B * d.K, d.h, d.w, 31, 29, true, rt.stream()); },
        static_cast<size_t>(d.B * d.K * 31 * 29));
    twice(
        "scorecam_masks",
        [&](float* out) { cuda::scorecam_masks(out, f32(dA), d.B, d.K, d.h, d.w, 17, 23, rt.stream()); },
        static_cast<size_t>(d.B * d.K * 17 * 23));
    twice(
        "softmax_weights", [&](float* out) { cuda::softmax_weights(out, f32(dA), d.B, d.K * d.Z(), rt.stream()); },
        d.numel());
    twice(
        "aggregate_layers", [&](float* out) { cuda::aggregate_layers(out, f32(dA), d.K, d.B, d.h, d.w, rt.stream()); },
        maps);
  }
#endif
}
