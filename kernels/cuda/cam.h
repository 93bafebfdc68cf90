// CUDA twins of the CAM kernels in kernels/cpu/cam.h (same argument order and meaning; a stream replaces the
// pool). Every reduction is a fixed tree (no atomics), so two runs give bit-identical maps; sums the CPU twin
// does in double are done in double here too. Launchers never allocate or synchronize: scratch comes from the
// caller, sized by the *_scratch_bytes functions (any alignment; slack for aligning is included).
// Device data cannot raise a C++ exception, so where the CPU twin throws on a value (Ablation-CAM y == 0, a CAM
// class out of range, non-finite Eigen-CAM input) the GPU twin writes NaN into the affected output instead.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cam.h"  // GradCamVariant
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// ---- gradient-weighted methods ------------------------------------------------------------------------

// Scratch bytes of grad_cam_forward / grad_cam_weighted_activations: the B*K channel weights of the
// channel-weight variants, 0 for the spatial ones (HiResCAM, element-wise, LayerCAM).
size_t grad_cam_scratch_bytes(int64_t B, int64_t K, GradCamVariant variant);

void grad_cam_channel_weights(float* weights,  // (B, K)
                              const float* A,  // (B, K, h, w)
                              const float* G,  // (B, K, h, w)
                              int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant, cudaStream_t stream);

// The map before post-processing, every variant behind one launcher: channel weights (one warp per plane) then
// the weighted channel sum, or the spatial sum directly. ReLU is post-processing step 1 (postprocess_layer).
void grad_cam_forward(float* cam,      // (B, h, w)
                      const float* A,  // (B, K, h, w)
                      const float* G,  // (B, K, h, w)
                      int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant, void* scratch,
                      size_t scratch_bytes, cudaStream_t stream);

// Per-channel terms whose sum over k is the map (input of --eigen-smooth); scratch as grad_cam_forward.
void grad_cam_weighted_activations(float* out,      // (B, K, h, w)
                                   const float* A,  // (B, K, h, w)
                                   const float* G,  // (B, K, h, w)
                                   int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant variant, void* scratch,
                                   size_t scratch_bytes, cudaStream_t stream);

// cam_b = sum_k weights_bk A_bk, double accumulation.
void weighted_channel_sum(float* cam,            // (B, h, w)
                          const float* weights,  // (B, K)
                          const float* A,        // (B, K, h, w)
                          int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);

// out_bk = weights_bk * A_bk. out may equal A.
void scale_channels(float* out,            // (B, K, h, w)
                    const float* A,        // (B, K, h, w)
                    const float* weights,  // (B, K)
                    int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);

// out = a * b. out may equal a or b.
void elementwise_product(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream);  // (n)

// Smooth Grad-CAM++ (see the CPU twin): D1 += G, D2 += G^2, D3 += G^3 (powers in double).
void smooth_gradcampp_accumulate(float* D1, float* D2, float* D3,  // (n) each
                                 const float* G,                   // (n)
                                 int64_t n, cudaStream_t stream);
void smooth_gradcampp_channel_weights(float* weights,  // (B, K)
                                      const float* A,  // (B, K, h, w) clean activation
                                      const float* D1, const float* D2, const float* D3,  // (B, K, h, w) means
                                      int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);
size_t smooth_gradcampp_scratch_bytes(int64_t B, int64_t K);
void smooth_gradcampp_forward(float* cam,      // (B, h, w)
                              const float* A,  // (B, K, h, w) clean activation
                              const float* D1, const float* D2, const float* D3,  // (B, K, h, w) means
                              int64_t B, int64_t K, int64_t h, int64_t w, void* scratch, size_t scratch_bytes,
                              cudaStream_t stream);

// NormGrad: cam_ij = ||G_:ij||_2 * ||A_:ij||_2.
void normgrad_forward(float* cam,      // (B, h, w)
                      const float* A,  // (B, K, h, w)
                      const float* G,  // (B, K, h, w)
                      int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);

// ---- Eigen-CAM ----------------------------------------------------------------------------------------
// Same definition, Gram choice (K x K if K <= h*w, else hw x hw) and sign rule as the CPU twin, all in double,
// nothing on the host: Gram matrix by a tiled kernel, then the top eigenvector by power iteration on repeated
// squares C^(2^s) (each square is one tiled product; per-image convergence is decided on the device and
// converged images skip the remaining squares), then the projection. See cam.cu for the accuracy argument.

size_t eigen_cam_scratch_bytes(int64_t B, int64_t K, int64_t h, int64_t w);

void eigen_cam_forward(float* cam,      // (B, h, w)
                       const float* A,  // (B, K, h, w)
                       int64_t B, int64_t K, int64_t h, int64_t w, void* scratch, size_t scratch_bytes,
                       cudaStream_t stream);

// ---- Score-CAM ----------------------------------------------------------------------------------------

// F.interpolate(mode="bilinear", align_corners=...) without antialias; source indices and lambdas in fp32 as
// ATen's CPU kernel (and the CPU twin) form them.
void bilinear_resize(float* out,       // (planes, out_h, out_w)
                     const float* in,  // (planes, in_h, in_w)
                     int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, bool align_corners,
                     cudaStream_t stream);

// M_bk = (U_bk - min U_bk) / (max U_bk - min U_bk + 1e-8), U = align_corners=true upsample of A; one block per
// plane (upsample, min/max, normalize in one kernel).
void scorecam_masks(float* masks,    // (B, K, H, W)
                    const float* A,  // (B, K, h, w)
                    int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W, cudaStream_t stream);

// out_i = x * masks_i over every input channel.
void apply_mask(float* out,          // (n, C, H, W)
                const float* x,      // (C, H, W)
                const float* masks,  // (n, H, W)
                int64_t n, int64_t C, int64_t H, int64_t W, cudaStream_t stream);

// w_b = softmax over k of scores_b (double).
void softmax_weights(float* w,             // (B, K)
                     const float* scores,  // (B, K)
                     int64_t B, int64_t K, cudaStream_t stream);

void scorecam_constant_channels(uint8_t* is_constant,  // (B, K)
                                const float* A,        // (B, K, h, w)
                                int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);
void scorecam_paper_weights(float* w,                   // (B, K)
                            const float* probs,         // (B, K)
                            const uint8_t* is_constant, // (B, K)
                            int64_t B, int64_t K, cudaStream_t stream);

// ---- Ablation-CAM -------------------------------------------------------------------------------------

// values_b = 0 if min A_b == 0, else min A_b - 1e7 (fp32).
void ablation_values(float* values,   // (B)
                     const float* A,  // (B, K, h, w)
                     int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream);

// n copies of one image's activation; copy i has channel k_begin + i set to *value. `value` is a device pointer
// (e.g. ablation_values' output + b) so the caller never reads it back; this is the only difference from the
// CPU twin, which takes the float itself.
void ablation_batch(float* out,            // (n, K, h, w)
                    const float* A_image,  // (K, h, w)
                    const float* value,    // (1) device
                    int64_t k_begin, int64_t n, int64_t K, int64_t h, int64_t w, cudaStream_t stream);

// w_bk = (y_b - y_ablated_bk) / y_b in double; NaN for an image with y_b == 0 (the CPU twin throws there; a
// kernel cannot, so the caller checks y after the pass: Explainer's check_ablation_scores).
void ablation_weights(float* w,                // (B, K)
                      const float* y,          // (B)
                      const float* y_ablated,  // (B, K)
                      int64_t B, int64_t K, cudaStream_t stream);

// ---- CAM ----------------------------------------------------------------------------------------------

// cam_b = sum_k W_{c_b,k} A_bk. classes is a device array; a class outside [0, num_classes) gives a NaN map (the
// CPU twin throws; callers validate classes on the host, where they choose them).
void class_activation_map(float* cam,              // (B, h, w)
                          const float* fc_weight,  // (num_classes, K)
                          const int64_t* classes,  // (B) device
                          const float* A,          // (B, K, h, w)
                          int64_t B, int64_t K, int64_t h, int64_t w, int64_t num_classes, cudaStream_t stream);

// ---- post-processing ----------------------------------------------------------------------------------

void relu_inplace(float* x, int64_t n, cudaStream_t stream);  // (n)

// m = m - min(m); m = m / (max(m) + 1e-7) per map (fp32, divisor formed in double as the CPU twin).
void minmax_normalize(float* maps,  // (count, hw)
                      int64_t count, int64_t hw, cudaStream_t stream);

// Steps 1-3 for one layer in one kernel over all maps: ReLU (unless apply_relu is false), min-max normalize at
// (h, w), half-pixel bilinear resize to (H, W). Each block recomputes its map's min/max (the low-resolution map
// is small) and normalizes the four taps on the fly with the CPU twin's fp32 operations. Unlike the CPU twin,
// cam is left unchanged.
void postprocess_layer(float* out,        // (B, H, W)
                       const float* cam,  // (B, h, w)
                       int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, bool apply_relu, cudaStream_t stream);

// Step 4: out = normalize(mean over layers of ReLU(per_layer)), one block per map.
void aggregate_layers(float* out,              // (B, H, W)
                      const float* per_layer,  // (L, B, H, W)
                      int64_t L, int64_t B, int64_t H, int64_t W, cudaStream_t stream);

// cam = tanh(2 cam / max cam) per map; maps whose max is <= 0 are left as is.
void layercam_tanh_scale(float* maps,  // (count, hw)
                         int64_t count, int64_t hw, cudaStream_t stream);

// Targets and seeds from the logits (the CPU twins' contracts, kernels/cpu/cam.h): classes (T, B) ranked by
// logit (ties to the lower index, -inf after numbers, NaN last) or fixed_class >= 0 everywhere; seeds (S, B, C)
// for targets [first, first + count), zero slots after. A class outside [0, C) gives a NaN seed row (the CPU
// twin throws; ranked classes never are).
void rank_targets(int64_t* classes,     // (T, B)
                  const float* logits,  // (B, C)
                  int64_t B, int64_t C, int64_t T, int64_t fixed_class, cudaStream_t stream);
void target_seeds(float* seeds,            // (S, B, C)
                  const int64_t* classes,  // (T, B)
                  const float* logits,     // (B, C)
                  int64_t B, int64_t C, int64_t first, int64_t count, int64_t S, bool softmax, cudaStream_t stream);

// scores[r] = logit or softmax probability of class classes[r * class_stride] in logits row r (the CPU twin's
// contract; a class outside [0, C) scores NaN).
void target_scores(float* scores, const float* logits, const int64_t* classes, int64_t class_stride, int64_t rows,
                   int64_t C, bool softmax, cudaStream_t stream);

// Smooth Grad-CAM++'s noisy copies (the CPU twins' contracts, kernels/cpu/cam.h): sigma_b = 0.2 (max - min) of
// image b; out slot s < count = x_b + z[first + s][b % N] * sigma_b (or + z when !scaled), zero after.
void smooth_noise_sigma(float* sigma, const float* x, int64_t B, int64_t plane, cudaStream_t stream);
void smooth_noisy_copies(float* out, const float* x, const float* z, const float* sigma, int64_t first, int64_t count,
                         int64_t S, int64_t B, int64_t N, int64_t plane, bool scaled, cudaStream_t stream);

// out_bc = guided_bc * cam_b.
void guided_gradcam(float* out,           // (B, C, H, W)
                    const float* guided,  // (B, C, H, W)
                    const float* cam,     // (B, H, W)
                    int64_t B, int64_t C, int64_t H, int64_t W, cudaStream_t stream);

}  // namespace camrt::cuda
