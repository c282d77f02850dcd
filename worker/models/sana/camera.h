// File: SANA-WM camera preprocessing (spec §3.1) and the per-token UCPE ray matrices (§3.2).
//
// Depends on LibTorch and the C++ standard library only.
//
// Two stages, following the reference paths the golden data was produced with
// (../shared/golden/sana-wm-tiny/README.md §1, §4 "camera.safetensors"):
//
//  1. Host-side preprocessing, once per rollout (diffusers `cam_utils.prepare_camera` plus the
//     pipeline's intrinsics handling):
//       * intrinsics in source-image pixels are fitted to the frame count (FitIntrinsicsSequence),
//         then remapped for the aspect-preserving resize + centre crop to the model resolution
//         (PlanResizeCenterCrop, TransformIntrinsicsForCrop);
//       * PrepareCamera: poses relative to frame 0 (P0^-1 Pi with the rigid inverse; frame 0 is
//         exactly I), intrinsics scaled to the latent grid (x by W_lat/W_px, y by H_lat/H_px),
//         `camera_conditions` (T_lat, 20) = [c2w_rel row-major 16, fx, fy, cx, cy] at pixel
//         frames 0, s, 2s, ... (s = VAE temporal stride), and `chunk_plucker` (6s, T_lat, H, W):
//         latent frame i gets raw frames [max(0, s*i - s + 1), +s), a short window padded by
//         repeating its last pose, each frame a Plücker map (d, m = origin x d), packed
//         frame-major (channel 6j + c).
//  2. Model-side, inside each forward (diffusers `_process_camera_conditions_ucpe`):
//       * ComputeRayMats: per token a world->ray SE(3) P = [[R_r^T, -R_r^T t], [0, 1]] with
//         z_r = normalize(R d_cam), x_r = normalize(R[:,1] x z_r), y_r = normalize(z_r x x_r);
//       * ComputeAbsMap: the up-map + latitude "absmap" (computed by the reference forward but
//         unused by the released config; kept for parity tests).
//
// Conventions: OpenCV camera axes (+x right, +y down, +z forward), c2w row-major, metric;
// pixel centres at integer coordinates u = 0..W-1, v = 0..H-1 (no +0.5);
// d_cam = normalize((u - cx)/fx, (v - cy)/fy, 1). The reference routes fx through a
// field-of-view round trip (fx -> fov -> fx); that equals the direct formula used here to ~1e-7.
//
// Precision: everything is computed in float64 and returned as float32 (or the requested dtype).
// The reference computes in float32; the difference is far below the golden tolerance (1e-5).
//
// Errors: InvalidInputError (worker/models/sana/errors.h) for caller inputs, naming the field.
#ifndef WMSERVE_WORKER_MODELS_SANA_CAMERA_H_
#define WMSERVE_WORKER_MODELS_SANA_CAMERA_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "worker/models/sana/sana_config.h"

namespace wmserve::worker::sana {

// Row-major 4x4 camera-to-world matrix, OpenCV axes, metric.
using CameraPose = std::array<double, 16>;

struct Intrinsics {
  double fx = 0, fy = 0, cx = 0, cy = 0;
};

// --- frame-count rules ---------------------------------------------------------------------

enum class RolloutMode { kBidirectional, kStreaming };
const char* RolloutModeName(RolloutMode mode);

// Pixel frames must be m*k + 1 with k >= 1, where m is the VAE temporal stride (8) for
// bidirectional rollouts and stride x chunk_size (24) for streaming ones (so that the latent
// count is 3k + 1 and the first chunk holds 4 latent frames).
int FrameCountMultiple(const SanaConfig& config, RolloutMode mode);
// Throws InvalidInputError, e.g.
//   "num_frames 50: streaming rollouts need 24k+1 frames (25, 49, 73, ...)".
void CheckNumFrames(const SanaConfig& config, int num_frames, RolloutMode mode);
// Streaming chunk plan over latent frames: [0, 1 + chunk_size), then chunk_size frames each.
// Throws InvalidInputError unless latent_frames = chunk_size*k + 1 with k >= 1.
std::vector<std::pair<int, int>> StreamingChunks(const SanaConfig& config, int latent_frames);

// --- intrinsics handling --------------------------------------------------------------------

// The aspect-preserving resize + centre crop of `resize_and_center_crop`: scale =
// max(th/sh, tw/sw); resized = max(target, round_half_even(src * scale)); crop offset =
// (resized - target) / 2 (floor).
struct ResizeCropPlan {
  int src_width = 0, src_height = 0;
  int resized_width = 0, resized_height = 0;
  int crop_left = 0, crop_top = 0;
  int target_width = 0, target_height = 0;
};
ResizeCropPlan PlanResizeCenterCrop(int src_width, int src_height, int target_width,
                                    int target_height);
// fx, cx scaled by resized/src in x (cx then minus crop_left); fy, cy likewise in y.
Intrinsics TransformIntrinsicsForCrop(const Intrinsics& in, const ResizeCropPlan& plan);
// Fits per-frame intrinsics to `num_frames`: equal -> copy; more -> truncate; one -> broadcast;
// otherwise linear interpolation over normalised time (the NVlabs `_fit_intrinsics_sequence`).
std::vector<Intrinsics> FitIntrinsicsSequence(const std::vector<Intrinsics>& in, int num_frames);

// --- preprocessing --------------------------------------------------------------------------

// Resolution and VAE strides the camera tensors are built for.
struct CameraGeometry {
  int pixel_height = 704;
  int pixel_width = 1280;
  int temporal_stride = 8;
  int spatial_stride = 32;
  static CameraGeometry FromConfig(const SanaConfig& config);
  int latent_height() const { return pixel_height / spatial_stride; }
  int latent_width() const { return pixel_width / spatial_stride; }
  int LatentFrames(int pixel_frames) const { return (pixel_frames - 1) / temporal_stride + 1; }
};

struct CameraTensors {
  at::Tensor c2w_rel;            // (F, 4, 4): P0^-1 Pi, frame 0 exactly the identity
  at::Tensor intrinsics_latent;  // (F, 4): [fx, fy, cx, cy] in latent pixels
  at::Tensor camera_conditions;  // (T_lat, 20), the "raymap"
  at::Tensor chunk_plucker;      // (6 * temporal_stride, T_lat, H_lat, W_lat)
};

// `c2w`: (F, 4, 4) camera-to-world; `intrinsics_px`: (F, 4) [fx, fy, cx, cy] in pixels of the
// model-resolution image (i.e. after TransformIntrinsicsForCrop). Any floating dtype, CPU.
// Any F >= 1 works (the frame-count rule is CheckNumFrames' job). Rotations are assumed
// orthonormal (the server validates them); the rigid inverse is used for P0^-1, as upstream.
// Outputs are CPU tensors of `dtype`. Throws InvalidInputError for malformed inputs.
CameraTensors PrepareCamera(const at::Tensor& c2w, const at::Tensor& intrinsics_px,
                            const CameraGeometry& geometry,
                            c10::ScalarType dtype = c10::ScalarType::Float);
CameraTensors PrepareCamera(const std::vector<CameraPose>& c2w,
                            const std::vector<Intrinsics>& intrinsics_px,
                            const CameraGeometry& geometry,
                            c10::ScalarType dtype = c10::ScalarType::Float);

// --- model-side geometry --------------------------------------------------------------------

// Inverse of rigid transforms (..., 4, 4): [[R^T, -R^T t], [0, 1]].
at::Tensor InvertRigid(const at::Tensor& transforms);

// UCPE world->ray matrices P for every token: `camera_conditions` (B, T, 20) -> (B, T, H, W, 4, 4)
// over an H x W latent grid, on the input's device. Computed in float64; returned as float64 for
// float64 input, float32 otherwise. A ray with a NaN direction gets the identity.
at::Tensor ComputeRayMats(const at::Tensor& camera_conditions, int64_t height, int64_t width);

// The absolute up-map (2) + latitude (1) map (B, T, H, W, 3) of the reference forward (unused in
// the released configuration, where the chunk-Plücker path replaces it). Same dtype rule.
// Reproduces the reference's Rodrigues quirk (third term k*k*sum(v) instead of k*(k.v)), which
// tilts the up-map by up to ~0.1 versus the textbook formula.
at::Tensor ComputeAbsMap(const at::Tensor& camera_conditions, int64_t height, int64_t width);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_CAMERA_H_
