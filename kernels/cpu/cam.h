// CPU arithmetic of every class activation map method in docs/cam-spec.md (formulas and eps values exact),
// plus Eigen-CAM's projection (Gram matrix + our own symmetric eigensolver), Score-CAM / Ablation-CAM helpers,
// bilinear resize and post-processing. This is the reference the CUDA CAM kernels are tested against.
// Precision: fp32 in and out; every reduction (channel weights, channel sums, norms, min/max-free sums) and
// every per-element formula with a division (Grad-CAM++, XGrad-CAM, softmax) is evaluated in double.
// Eigen-CAM works entirely in double. Results do not depend on the pool's thread count (bit-identical).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// ---------------------------------------------------------------------------------------------------------
// Gradient-weighted methods. A = target-layer activation, G = dy/dA, both (B, K, h, w); Z = h*w.
// ---------------------------------------------------------------------------------------------------------
enum class GradCamVariant {
  GradCam,             // w_k = (1/Z) sum G_k;                                   cam = sum_k w_k A_k
  GradCamNeg,          // counterfactual: w_k = (1/Z) sum (-G_k)
  HiResCam,            // cam = sum_k G_k * A_k
  GradCamElementwise,  // cam = sum_k ReLU(G_k * A_k)
  GradCamPlusPlus,     // alpha = G^2 / (2G^2 + S_k G^3 + 1e-6) (0 where G == 0); w_k = sum alpha ReLU(G)
  XGradCam,            // w_k = sum G_k A_k / (sum A_k + 1e-7)
  LayerCam,            // cam = sum_k ReLU(G_k) * A_k
};

// True for the variants defined by one weight per channel (GradCam, GradCamNeg, GradCamPlusPlus, XGradCam).
bool grad_cam_has_channel_weights(GradCamVariant variant);

// Channel weights w_k of a channel-weight variant (throws for the spatial ones).
void grad_cam_channel_weights(float* weights,  // (B, K)
                              const float* A,  // (B, K, h, w)
                              const float* G,  // (B, K, h, w)
                              int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant, ThreadPool& pool);

// The map before post-processing (no ReLU, no normalization). Channel-weight variants allocate B*K floats for
// the weights (call grad_cam_channel_weights + weighted_channel_sum with your own buffer to avoid it); the
// result is bit-identical to that two-call path.
void grad_cam_forward(float* cam,      // (B, h, w)
                      const float* A,  // (B, K, h, w)
                      const float* G,  // (B, K, h, w)
                      int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant, ThreadPool& pool);

// The per-channel terms whose sum over k is the variant's map: w_k A_k for channel-weight variants,
// G*A (HiResCAM), ReLU(G*A) (element-wise), ReLU(G)*A (LayerCAM). Input of --eigen-smooth (spec step 6),
// as in pytorch-grad-cam, which projects exactly these tensors.
void grad_cam_weighted_activations(float* out,      // (B, K, h, w)
                                   const float* A,  // (B, K, h, w)
                                   const float* G,  // (B, K, h, w)
                                   int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant,
                                   ThreadPool& pool);

// cam_b = sum_k weights_bk A_bk (double accumulation). Used by CAM, Score-CAM, Ablation-CAM, Grad-CAM.
void weighted_channel_sum(float* cam,            // (B, h, w)
                          const float* weights,  // (B, K)
                          const float* A,        // (B, K, h, w)
                          int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// out_bk = weights_bk * A_bk: the weighted activations that --eigen-smooth projects. out may equal A.
void scale_channels(float* out,            // (B, K, h, w)
                    const float* A,        // (B, K, h, w)
                    const float* weights,  // (B, K)
                    int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// out = a * b element-wise (EigenGrad-CAM's G * A). out may equal a or b.
void elementwise_product(float* out, const float* a, const float* b, int64_t n, ThreadPool& pool);  // (n)

// Smooth Grad-CAM++: D1 += G, D2 += G^2, D3 += G^3 for one noisy sample (powers formed in double). The
// caller zeroes D1..D3 first and divides them by the sample count before smooth_gradcampp_forward.
void smooth_gradcampp_accumulate(float* D1, float* D2, float* D3,  // (n) each
                                 const float* G,                   // (n)
                                 int64_t n, ThreadPool& pool);

// Smooth Grad-CAM++'s noisy copies, made on the pass's device. sigma_b = 0.2 (max x_b - min x_b) per image (spec),
// in float. out (S, B, plane): slot s < count holds x_b + z[first + s][b % N] * sigma_b (z standard normals drawn
// once; scaled = false: z is the noise itself, injected by tests), slots from count on are zero. The float
// operations are those of x + std::normal_distribution(0, sigma), so host-drawn z give the same copies.
void smooth_noise_sigma(float* sigma, const float* x, int64_t B, int64_t plane);  // (B); x (B, plane)
void smooth_noisy_copies(float* out,        // (S, B, plane)
                         const float* x,    // (B, plane)
                         const float* z,    // (samples, N, plane)
                         const float* sigma,  // (B)
                         int64_t first, int64_t count, int64_t S, int64_t B, int64_t N, int64_t plane, bool scaled,
                         ThreadPool& pool);

// Channel weights from the sample means: S_k = sum A_k (clean input);
// alpha = D2 / (2 D2 + S_k D3 + 1e-6), 0 where D2 == 0; w_k = sum alpha ReLU(D1).
void smooth_gradcampp_channel_weights(float* weights,  // (B, K)
                                      const float* A,  // (B, K, h, w) clean activation
                                      const float* D1, const float* D2, const float* D3,  // (B, K, h, w) means
                                      int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);
// cam = sum_k w_k A_k with the weights above (allocates B*K floats, as grad_cam_forward).
void smooth_gradcampp_forward(float* cam,      // (B, h, w)
                              const float* A,  // (B, K, h, w) clean activation
                              const float* D1, const float* D2, const float* D3,  // (B, K, h, w) means
                              int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// NormGrad: cam_ij = ||G_:ij||_2 * ||A_:ij||_2 (non-negative).
void normgrad_forward(float* cam,      // (B, h, w)
                      const float* A,  // (B, K, h, w)
                      const float* G,  // (B, K, h, w)
                      int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// ---------------------------------------------------------------------------------------------------------
// Eigen-CAM. Per image: M = A as (Z x K), each channel column centred over positions; cam = M v with v the
// first right-singular vector; flipped if sum_ij cam_ij * (sum_k A_kij) < 0 (no flip when that sum is 0).
// No SVD: the smaller Gram matrix (K x K = M^T M if K <= Z, else Z x Z = M M^T, where cam = sigma u =
// sqrt(lambda) u) and its top eigenpair by symmetric_top_eigenpair. EigenGrad-CAM: pass G * A.
// ---------------------------------------------------------------------------------------------------------

// Floats of scratch eigen_cam_forward needs with a pool of `threads` threads (images run in parallel, one
// scratch slot each; includes slack to align the doubles inside).
size_t eigen_cam_scratch_floats(int64_t K, int64_t h, int64_t w, int threads);

// scratch: eigen_cam_scratch_floats(K, h, w, pool.num_threads()) floats, any alignment; nullptr allocates.
void eigen_cam_forward(float* cam,      // (B, h, w)
                       const float* A,  // (B, K, h, w)
                       int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool, float* scratch);

// Doubles of `work` symmetric_top_eigenpair needs for an n x n matrix.
size_t symmetric_eigen_work_doubles(int64_t n);

// Eigenvector (unit norm, sign as the solver leaves it) of the algebraically largest eigenvalue of the
// symmetric matrix `a`, which is destroyed (it holds the Householder vectors on return). Returns the
// eigenvalue. Householder tridiagonalization, bisection on the Sturm sequence, inverse iteration; see cam.cpp.
double symmetric_top_eigenpair(double* v,  // (n)
                               double* a,  // (n, n) row-major, symmetric; destroyed
                               int64_t n, double* work, ThreadPool& pool);

// ---------------------------------------------------------------------------------------------------------
// Score-CAM.
// ---------------------------------------------------------------------------------------------------------

// PyTorch F.interpolate(mode="bilinear", align_corners=...) on `planes` planes, no antialias; the source
// index and the lambdas are formed in fp32 exactly as ATen's CPU kernel does. align_corners=false is the
// spec's half-pixel resize (post-processing step 3), true is Score-CAM's upsampling.
void bilinear_resize(float* out,       // (planes, out_h, out_w)
                     const float* in,  // (planes, in_h, in_w)
                     int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, bool align_corners,
                     ThreadPool& pool);

// M_bk = (U_bk - min U_bk) / (max U_bk - min U_bk + 1e-8), U = bilinear upsample of A (align_corners=true),
// computed in fp32 like pytorch-grad-cam (torch float32 tensors).
void scorecam_masks(float* masks,    // (B, K, H, W)
                    const float* A,  // (B, K, h, w)
                    int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W, ThreadPool& pool);

// out_i = x * masks_i over every input channel: the masked inputs of n channels of one image (pass
// masks + k0*H*W for a batch starting at channel k0).
void apply_mask(float* out,          // (n, C, H, W)
                const float* x,      // (C, H, W)
                const float* masks,  // (n, H, W)
                int64_t n, int64_t C, int64_t H, int64_t W, ThreadPool& pool);

// Spec default: w_b = softmax over k of the masked scores s_bk (in double).
void softmax_weights(float* w,             // (B, K)
                     const float* scores,  // (B, K)
                     int64_t B, int64_t K);

// --scorecam=paper. is_constant_bk = 1 where max A_bk == min A_bk ("channels with max == min skipped"),
// decided on A itself: the fp32 upsampling of a constant plane can wobble in the last bit, A cannot. The
// caller need not run those forwards.
void scorecam_constant_channels(uint8_t* is_constant,  // (B, K)
                                const float* A,        // (B, K, h, w)
                                int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);
// w_bk = probs_bk (= softmax(z(x * M_bk))_c, computed by the caller) and 0 for skipped channels.
void scorecam_paper_weights(float* w,                   // (B, K)
                            const float* probs,         // (B, K); ignored where is_constant
                            const uint8_t* is_constant, // (B, K)
                            int64_t B, int64_t K);

// ---------------------------------------------------------------------------------------------------------
// Ablation-CAM.
// ---------------------------------------------------------------------------------------------------------

// Per image b: 0 if min A_b == 0, else min A_b - 1e7 (fp32, as torch does), the min over all K*h*w values of
// that image. (pytorch-grad-cam re-evaluates torch.min over the already-ablated copies inside its loop, so
// its i-th copy of a batch gets min - (i+1)*1e7 when min != 0; the spec's value, implemented here, is the
// one the loop means.)
void ablation_values(float* values,   // (B)
                     const float* A,  // (B, K, h, w)
                     int64_t B, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// n copies of one image's activation; copy i has channel k_begin + i set to `value`.
void ablation_batch(float* out,            // (n, K, h, w)
                    const float* A_image,  // (K, h, w)
                    float value, int64_t k_begin, int64_t n, int64_t K, int64_t h, int64_t w, ThreadPool& pool);

// w_bk = (y_b - y_ablated_bk) / y_b (in double). Throws when a y_b is exactly 0 (the weights are undefined).
void ablation_weights(float* w,                // (B, K)
                      const float* y,          // (B)
                      const float* y_ablated,  // (B, K)
                      int64_t B, int64_t K);

// ---------------------------------------------------------------------------------------------------------
// CAM (global average pooling + one fully connected layer W): cam_b = sum_k W_{c_b,k} A_bk.
// num_classes bounds-checks classes (the brief's signature lacked it).
// ---------------------------------------------------------------------------------------------------------
void class_activation_map(float* cam,              // (B, h, w)
                          const float* fc_weight,  // (num_classes, K)
                          const int64_t* classes,  // (B)
                          const float* A,          // (B, K, h, w)
                          int64_t B, int64_t K, int64_t h, int64_t w, int64_t num_classes, ThreadPool& pool);

// ---------------------------------------------------------------------------------------------------------
// Post-processing (spec steps 1-4) and input-space combination.
// ---------------------------------------------------------------------------------------------------------

void relu_inplace(float* x, int64_t n);  // (n)

// Step 2 per map, in fp32 like pytorch-grad-cam's numpy: m = m - min(m); m = m / (max(m) + 1e-7).
// A constant map becomes all zeros.
void minmax_normalize(float* maps,  // (count, hw)
                      int64_t count, int64_t hw, ThreadPool& pool);

// Steps 1-3 for one layer: ReLU (skipped when apply_relu is false: NormGrad), normalize at (h, w), half-pixel
// resize to (H, W). cam is modified in place.
void postprocess_layer(float* out,  // (B, H, W)
                       float* cam,  // (B, h, w)
                       int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, bool apply_relu, ThreadPool& pool);

// Step 4, always (also for L == 1): out = normalize(mean over layers of ReLU(per_layer)).
void aggregate_layers(float* out,              // (B, H, W)
                      const float* per_layer,  // (L, B, H, W)
                      int64_t L, int64_t B, int64_t H, int64_t W, ThreadPool& pool);

// LayerCAM's paper option for shallow layers: cam = tanh(2 cam / max cam) per map. A map whose max is <= 0 is
// left as is (nothing positive survives the later ReLU anyway; dividing by it would flip or blow up signs).
void layercam_tanh_scale(float* maps,  // (count, hw)
                         int64_t count, int64_t hw, ThreadPool& pool);

// ---------------------------------------------------------------------------------------------------------
// Targets and seeds from the logits, on the pass's device (a captured GPU explain pass needs no host decision).
// ---------------------------------------------------------------------------------------------------------

// classes (T, B): fixed_class >= 0 gives that class for every t; otherwise target t of image b is the t-th of
// logits row b in descending order: larger logit first, the lower class index on ties, -inf after every
// number and NaN after -inf (a well-defined stable descending sort).
void rank_targets(int64_t* classes,      // (T, B)
                  const float* logits,   // (B, C)
                  int64_t B, int64_t C, int64_t T, int64_t fixed_class);

// seeds (S, B, C): slot s < count is d(y)/d(logits) for target `first + s` of classes (T, B), slots from count on
// are zero. y = z_c (one-hot seed), or with softmax y = p_c: seed_j = p_c (delta_cj - p_j), p in double from
// exp(z_j - max z).
void target_seeds(float* seeds,            // (S, B, C)
                  const int64_t* classes,  // (T, B)
                  const float* logits,     // (B, C)
                  int64_t B, int64_t C, int64_t first, int64_t count, int64_t S, bool softmax);

// scores[r] = the explained score of logits row r (rows, C) for class classes[r * class_stride] (stride 0: one
// class for every row): the logit z_c, or with softmax p_c = exp(z_c - max z) / sum_j exp(z_j - max z) in double.
// Score-CAM's and Ablation-CAM's extra forwards are scored this way, on the device.
void target_scores(float* scores,           // (rows)
                   const float* logits,     // (rows, C)
                   const int64_t* classes,  // (rows) or (1)
                   int64_t class_stride, int64_t rows, int64_t C, bool softmax);

// Guided Grad-CAM: out_bc = guided_bc * cam_b (the final upsampled, normalized map) over the C input channels.
void guided_gradcam(float* out,           // (B, C, H, W)
                    const float* guided,  // (B, C, H, W)
                    const float* cam,     // (B, H, W)
                    int64_t B, int64_t C, int64_t H, int64_t W, ThreadPool& pool);

}  // namespace camrt
