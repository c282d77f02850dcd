// The `warp` model: inverse warping of the first image under a fronto-parallel plane prior.
//
// Pixel convention used throughout: continuous image coordinates put the image's top-left
// *corner* at (0, 0), so pixel (i, j) covers [i, i+1) x [j, j+1) and its centre is
// (i + 0.5, j + 0.5); intrinsics are read in this convention (a centred principal point is
// cx = width / 2, as wmctl's presets write it). It is the convention in which a resize is a pure
// scale (x' = s x), which makes the intrinsics remap exact, and it is the one that
// upsample_bilinear2d and grid_sample use with align_corners=false.
//
// Per target frame, the whole geometry collapses to one projective map of the target pixel
// centre p = (u, v, 1):  q = N p,  grid = c + (q_x, q_y) / q_z,  where `grid` is already in
// grid_sample's normalised [-1, 1] source coordinates and the ray hits the plane iff q_z > 0
// (see ComputeFrameMap). N and c are computed per frame in double; the per-pixel work is a few
// broadcast tensor ops in float, then grid_sample.
#include "worker/models/warp_model.h"

#include "worker/models/torch_device.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/grid_sampler.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace wmserve::worker {
namespace {

constexpr char kModelName[] = "warp";
constexpr int kNativeWidth = 1280;
constexpr int kNativeHeight = 704;
constexpr double kDefaultDepth = 2.0;
constexpr char kAllowedOptions[] = "depth, fill";

// A ray counts as hitting the plane when q_z > kMinInverseDistance. q_z is the inverse hit
// distance relative to `depth` (see ComputeFrameMap), so this treats hits more than 1e6 x depth
// away as misses; they would land far outside the source image anyway, and it keeps 1 / q_z
// finite.
constexpr float kMinInverseDistance = 1e-6f;
// Normalised grid coordinate for missed rays under "fill": "black": far enough outside [-1, 1]
// that bilinear zero padding gives exactly 0.
constexpr float kOutsideGrid = -4.0f;

// grid_sampler's integer enums (ATen's GridSamplerInterpolation / GridSamplerPadding).
constexpr int64_t kInterpolationBilinear = 0;
constexpr int64_t kPaddingZeros = 0;
constexpr int64_t kPaddingBorder = 1;

// On CPU one frame's temporaries (~31 bytes per pixel) stay cache-friendly and cancellation is
// checked every frame; on CUDA several frames per launch amortise kernel launches.
constexpr int kCpuFramesPerStep = 1;
constexpr int kCudaFramesPerStep = 8;
// Device bytes per output pixel of one frame in flight: q, reused as the grid (12), 1/q_z (4),
// sampled RGB (12), uint8 staging (3).
constexpr uint64_t kStepBytesPerPixel = 31;

using Mat3 = std::array<double, 9>;  // row-major
using Vec3 = std::array<double, 3>;

Mat3 Multiply(const Mat3& a, const Mat3& b) {
  Mat3 out{};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      for (int k = 0; k < 3; ++k) out[r * 3 + c] += a[r * 3 + k] * b[k * 3 + c];
    }
  }
  return out;
}

Mat3 Transpose(const Mat3& a) {
  return {a[0], a[3], a[6], a[1], a[4], a[7], a[2], a[5], a[8]};
}

Vec3 Apply(const Mat3& a, const Vec3& v) {
  return {a[0] * v[0] + a[1] * v[1] + a[2] * v[2], a[3] * v[0] + a[4] * v[1] + a[5] * v[2],
          a[6] * v[0] + a[7] * v[1] + a[8] * v[2]};
}

struct RigidPose {
  Mat3 rotation{};
  Vec3 translation{};
};

RigidPose PoseFromC2w(const std::array<double, 16>& c2w) {
  return {{c2w[0], c2w[1], c2w[2], c2w[4], c2w[5], c2w[6], c2w[8], c2w[9], c2w[10]},
          {c2w[3], c2w[7], c2w[11]}};
}

// ref^-1 * pose for rigid transforms. The server validates that rotations are orthonormal, so
// the transpose is the inverse (and better conditioned than a general 4x4 inverse).
RigidPose RelativeTo(const RigidPose& ref, const RigidPose& pose) {
  const Mat3 ref_inv = Transpose(ref.rotation);
  const Vec3 delta = {pose.translation[0] - ref.translation[0],
                      pose.translation[1] - ref.translation[1],
                      pose.translation[2] - ref.translation[2]};
  return {Multiply(ref_inv, pose.rotation), Apply(ref_inv, delta)};
}

struct Pinhole {
  double fx = 0, fy = 0, cx = 0, cy = 0;
};

Mat3 InverseK(const Pinhole& k) {
  return {1.0 / k.fx, 0.0, -k.cx / k.fx, 0.0, 1.0 / k.fy, -k.cy / k.fy, 0.0, 0.0, 1.0};
}

// Aspect-preserving resize that covers the output, then a centred crop.
struct ResizeCrop {
  int resized_width = 0;
  int resized_height = 0;
  int offset_x = 0;
  int offset_y = 0;
  double scale_x = 1;  // resized / source, per axis (they differ by rounding only)
  double scale_y = 1;
};

ResizeCrop PlanResizeCrop(int src_width, int src_height, int dst_width, int dst_height) {
  const double scale = std::max(static_cast<double>(dst_width) / src_width,
                                static_cast<double>(dst_height) / src_height);
  ResizeCrop plan;
  // max() guards against rounding the covering side below the output size.
  plan.resized_width = std::max(dst_width, static_cast<int>(std::lround(src_width * scale)));
  plan.resized_height = std::max(dst_height, static_cast<int>(std::lround(src_height * scale)));
  plan.offset_x = (plan.resized_width - dst_width) / 2;
  plan.offset_y = (plan.resized_height - dst_height) / 2;
  plan.scale_x = static_cast<double>(plan.resized_width) / src_width;
  plan.scale_y = static_cast<double>(plan.resized_height) / src_height;
  return plan;
}

// Exact in the pixel-corner-origin convention: resizing scales coordinates, cropping shifts them.
Pinhole RemapIntrinsics(const CameraFrame& camera, const ResizeCrop& plan) {
  return {camera.fx * plan.scale_x, camera.fy * plan.scale_y,
          camera.cx * plan.scale_x - plan.offset_x, camera.cy * plan.scale_y - plan.offset_y};
}

// Per-frame coefficients: q = N p, grid = c + (q_x, q_y) / q_z, hit iff q_z > 0.
struct FrameMap {
  std::array<float, 9> n{};  // row-major
  std::array<float, 2> c{};
};

// Derivation. In camera-0 coordinates the target ray is X(s) = t + s d with d = R K_i^-1 p. It
// meets the plane z = D at s = (D - t_z) / d_z, where X_z = D, so the source pixel is
//   x = fx0 X_x / D + cx0,   y = fy0 X_y / D + cy0,
// and grid_sample's normalised coordinate (align_corners=false) is g_x = 2 x / W - 1, i.e.
//   g_x = [2 fx0 t_x / (W D) + 2 cx0 / W - 1] + (2 fx0 / W) d_x / (D d_z / (D - t_z)).
// So with q_z = D d_z / (D - t_z) (= D / s: positive exactly when the ray hits the plane in front
// of the camera, and scaled by D so the threshold above is depth-independent),
//   N = [(2 fx0 / W) M_x; (2 fy0 / H) M_y; D / (D - t_z) M_z] with M = R K_i^-1, and
//   c = (2 fx0 t_x / (W D) + 2 cx0 / W - 1, 2 fy0 t_y / (H D) + 2 cy0 / H - 1).
// For a miss, (q_x, q_y) / eps still points the way the ray leaves the image, so border fill
// clamps to the edge the ray crossed. A camera sitting on the plane (D == t_z) sees nothing:
// q_z = 0 everywhere.
FrameMap ComputeFrameMap(const RigidPose& rel, const Pinhole& target, const Pinhole& source,
                         double depth, int width, int height) {
  const Mat3 m = Multiply(rel.rotation, InverseK(target));
  const double gap = depth - rel.translation[2];
  const double row_scale[3] = {2.0 * source.fx / width, 2.0 * source.fy / height,
                               gap == 0.0 ? 0.0 : depth / gap};
  FrameMap map;
  for (int r = 0; r < 3; ++r) {
    for (int k = 0; k < 3; ++k) map.n[r * 3 + k] = static_cast<float>(row_scale[r] * m[r * 3 + k]);
  }
  map.c[0] = static_cast<float>(2.0 * source.fx * rel.translation[0] / (width * depth) +
                                2.0 * source.cx / width - 1.0);
  map.c[1] = static_cast<float>(2.0 * source.fy * rel.translation[1] / (height * depth) +
                                2.0 * source.cy / height - 1.0);
  return map;
}

struct WarpOptions {
  double depth = kDefaultDepth;
  bool black_fill = false;
};

absl::StatusOr<WarpOptions> ParseOptions(const std::map<std::string, std::string>& options) {
  WarpOptions parsed;
  for (const auto& [key, value] : options) {
    if (key == "depth") {
      double depth = 0;
      if (!absl::SimpleAtod(value, &depth) || !std::isfinite(depth) || depth <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model_options.depth: must be a finite number of metres > 0 (got \"", value, "\")"));
      }
      parsed.depth = depth;
    } else if (key == "fill") {
      if (value != "border" && value != "black") {
        return absl::InvalidArgumentError(absl::StrCat(
            "model_options.fill: must be \"border\" or \"black\" (got \"", value, "\")"));
      }
      parsed.black_fill = value == "black";
    } else {
      return absl::InvalidArgumentError(absl::StrCat("model_options.", key,
                                                     ": unknown option for model \"", kModelName,
                                                     "\" (allowed: ", kAllowedOptions, ")"));
    }
  }
  return parsed;
}

bool IsUsableFocal(double f) { return std::isfinite(f) && f > 0; }

// The server validates requests; these checks keep the model safe for direct callers (tests,
// warm-up) and name the field like the server does.
absl::Status ValidateSpec(const RolloutSpec& spec) {
  if (spec.width <= 0 || spec.height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("output size: must be > 0 (got ", spec.width, "x", spec.height, ")"));
  }
  const RgbImage& image = spec.image;
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("image: inconsistent RGB image (", image.width,
                                                   "x", image.height, ", ",
                                                   image.pixels.size(), " bytes)"));
  }
  if (spec.cameras.empty()) {
    return absl::InvalidArgumentError("trajectory.poses: no camera frames");
  }
  for (size_t i = 0; i < spec.cameras.size(); ++i) {
    const CameraFrame& camera = spec.cameras[i];
    if (!IsUsableFocal(camera.fx) || !IsUsableFocal(camera.fy) || !std::isfinite(camera.cx) ||
        !std::isfinite(camera.cy)) {
      return absl::InvalidArgumentError(
          absl::StrCat("trajectory.intrinsics[", i, "]: focal lengths must be finite and > 0"));
    }
  }
  return absl::OkStatus();
}

// Runs `fn` and turns every exception (torch reports errors by throwing c10::Error) into a
// status, so nothing throws across the Model interface.
template <typename Fn>
auto CatchTorch(const char* what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("warp ", what, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("warp ", what, ": ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("warp ", what, ": out of host memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("warp ", what, ": ", e.what()));
  }
}


// Everything a rollout needs on the device, prepared by the image encode stage.
struct WarpState {
  at::Tensor source;     // [1, 3, H, W] float, pixel values + 0.5 (see Render)
  at::Tensor u_centres;  // [W] float, i + 0.5
  at::Tensor v_centres;  // [H] float, j + 0.5
  at::Tensor maps_n;     // [frames, 3, 3] float, FrameMap::n
  at::Tensor maps_c;     // [frames, 2] float, FrameMap::c
};

// Resize + centre crop to the output size, as float NCHW with the rounding offset added.
at::Tensor EncodeImage(const RgbImage& image, const ResizeCrop& plan, int width, int height,
                       const c10::Device& device) {
  // from_blob does not copy and never writes here: the tensor is only read (uploaded/converted).
  at::Tensor hwc = at::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                                 {1, image.height, image.width, 3}, at::kByte);
  // Upload as uint8 (a third of the bytes), convert on the device.
  at::Tensor x = hwc.to(device).permute({0, 3, 1, 2}).to(at::kFloat);
  if (plan.resized_width != image.width || plan.resized_height != image.height) {
    const std::array<int64_t, 2> size = {plan.resized_height, plan.resized_width};
    x = at::upsample_bilinear2d(x, at::IntArrayRef(size), /*align_corners=*/false);
  }
  x = x.narrow(2, plan.offset_y, height).narrow(3, plan.offset_x, width);
  // +0.5 here makes the float->uint8 truncation in Render a round-to-nearest: bilinear sampling
  // is a convex combination, so it carries the offset through unchanged (except next to the
  // border under zero padding, where it fades with the in-image weight: < 0.5 LSB).
  at::Tensor source = at::empty({1, 3, height, width}, x.options());
  source.copy_(x).add_(0.5);
  return source;
}

at::Tensor PixelCentres(int64_t count, const c10::Device& device) {
  return at::arange(count, at::TensorOptions().dtype(at::kFloat).device(device)).add_(0.5);
}

// Packs the per-frame maps into two small tensors and uploads them once per rollout.
void UploadMaps(const std::vector<FrameMap>& maps, const c10::Device& device, WarpState& state) {
  const int64_t frames = static_cast<int64_t>(maps.size());
  at::Tensor n = at::empty({frames, 3, 3}, at::kFloat);
  at::Tensor c = at::empty({frames, 2}, at::kFloat);
  float* n_data = n.data_ptr<float>();
  float* c_data = c.data_ptr<float>();
  for (int64_t i = 0; i < frames; ++i) {
    std::copy(maps[i].n.begin(), maps[i].n.end(), n_data + i * 9);
    std::copy(maps[i].c.begin(), maps[i].c.end(), c_data + i * 2);
  }
  state.maps_n = n.to(device);
  state.maps_c = c.to(device);
}

class WarpRollout final : public ModelRollout {
 public:
  WarpRollout(WarpState state, c10::Device device, int width, int height, int frames,
              int frames_per_chunk, bool black_fill)
      : state_(std::move(state)),
        device_(device),
        width_(width),
        height_(height),
        frames_(frames),
        frames_per_chunk_(frames_per_chunk),
        frames_per_step_(std::min({device.is_cpu() ? kCpuFramesPerStep : kCudaFramesPerStep,
                                   frames_per_chunk, frames})),
        black_fill_(black_fill) {
    // Reused by every step: fresh multi-megabyte buffers per frame cost more in page faults
    // (glibc hands large blocks back to the kernel on free) than the arithmetic that fills them.
    const at::TensorOptions options = state_.source.options();
    q_workspace_ = at::empty({frames_per_step_, 3, height, width}, options);
    inverse_z_workspace_ = at::empty({frames_per_step_, 1, height, width}, options);
  }

  absl::StatusOr<std::optional<FrameChunk>> NextChunk(RolloutControl& control) override {
    return CatchTorch("next chunk", [&] { return NextChunkOrThrow(control); });
  }

 private:
  absl::StatusOr<std::optional<FrameChunk>> NextChunkOrThrow(RolloutControl& control);
  at::Tensor BuildGrids(int64_t first, int64_t count);
  void Render(const at::Tensor& grids, const at::Tensor& rgb) const;

  const WarpState state_;
  const c10::Device device_;
  const int width_;
  const int height_;
  const int frames_;
  const int frames_per_chunk_;
  const int frames_per_step_;
  const bool black_fill_;
  at::Tensor q_workspace_;          // [frames_per_step, 3, H, W]; its x/y planes become the grid
  at::Tensor inverse_z_workspace_;  // [frames_per_step, 1, H, W]
  int next_frame_ = 0;
};

absl::StatusOr<std::optional<FrameChunk>> WarpRollout::NextChunkOrThrow(
    RolloutControl& control) {
  if (next_frame_ >= frames_) return std::nullopt;
  c10::InferenceMode inference;
  FrameChunk chunk;
  chunk.first_frame = next_frame_;
  chunk.frame_count = std::min(frames_per_chunk_, frames_ - next_frame_);
  chunk.width = width_;
  chunk.height = height_;
  chunk.rgb.resize(static_cast<size_t>(chunk.frame_count) * height_ * width_ * 3);
  // Frames are written straight into the chunk's buffer: no extra host copy.
  at::Tensor out = at::from_blob(chunk.rgb.data(), {chunk.frame_count, height_, width_, 3},
                                 at::kByte);
  for (int done = 0; done < chunk.frame_count;) {
    if (control.cancelled()) return absl::CancelledError("rollout cancelled");
    const int count = std::min(frames_per_step_, chunk.frame_count - done);
    at::Tensor grids;
    {
      StageTimer timer(control, ModelStage::kBackbone);
      grids = BuildGrids(chunk.first_frame + done, count);
    }
    {
      StageTimer timer(control, ModelStage::kDecode);
      Render(grids, out.narrow(0, done, count));
    }
    // Progress counts finished frames of the whole rollout: step k of `frames_` means frame k-1
    // is done.
    for (int i = 0; i < count; ++i) {
      control.OnStep(ModelStage::kBackbone, chunk.first_frame + done + i + 1, frames_);
    }
    done += count;
  }
  next_frame_ += chunk.frame_count;
  return chunk;
}

// Sampling grids for frames [first, first + count), planar: [count, 2 (x, y), H, W]. The
// projective map is separable before the division, N p = N_0 u + (N_1 v + N_2), so q is one
// broadcast add of a per-column and a per-row term (no [H*W, 3] pixel tensor, no matmul). The
// planar layout keeps every elementwise op running along contiguous rows (an interleaved
// [.., W, 2] layout makes them ~5x slower), and grid_sample reads planar grids natively.
at::Tensor WarpRollout::BuildGrids(int64_t first, int64_t count) {
  const at::Tensor n = state_.maps_n.narrow(0, first, count);  // [F, 3 (row), 3 (col)]
  const at::Tensor c = state_.maps_c.narrow(0, first, count).view({count, 2, 1, 1});
  const at::Tensor n_u = n.select(2, 0).reshape({count, 3, 1, 1});
  const at::Tensor n_v = n.select(2, 1).reshape({count, 3, 1, 1});
  const at::Tensor n_1 = n.select(2, 2).reshape({count, 3, 1, 1});
  const at::Tensor per_column = state_.u_centres.view({1, 1, 1, width_}).mul(n_u);  // [F,3,1,W]
  const at::Tensor per_row =
      at::addcmul(n_1, state_.v_centres.view({1, 1, height_, 1}), n_v);  // [F,3,H,1]
  at::Tensor q = q_workspace_.narrow(0, 0, count);  // [F,3,H,W]
  at::add_out(q, per_column, per_row);
  const at::Tensor q_z = q.narrow(1, 2, 1);
  // Clamping instead of masking keeps misses finite and pointing off-image (see FrameMap).
  at::Tensor inverse_z = inverse_z_workspace_.narrow(0, 0, count);
  at::clamp_min_out(inverse_z, q_z, kMinInverseDistance).reciprocal_();
  // In place over q's x/y planes.
  at::Tensor grids = q.narrow(1, 0, 2);
  at::addcmul_out(grids, c, grids, inverse_z);
  if (black_fill_) {
    // A ray straight back from the plane has (q_x, q_y) ~ 0 and would land mid-image; moving x
    // off-image is enough for zero padding.
    grids.select(1, 0).masked_fill_(q_z.squeeze(1).le(kMinInverseDistance), kOutsideGrid);
  }
  return grids;
}

// Largest number of row bands <= the intra-op thread count that divides `height`. ATen's CPU
// grid_sample parallelises over the batch only, so one frame is sampled as that many bands.
int64_t RowBands(int64_t height) {
  int64_t bands = std::max(1, at::get_num_threads());
  while (height % bands != 0) --bands;
  return bands;
}

// Samples the source with planar `grids` [count, 2, H, W] and writes uint8 HxWx3 frames into
// `rgb` ([count, H, W, 3], host memory).
void WarpRollout::Render(const at::Tensor& grids, const at::Tensor& rgb) const {
  const int64_t count = grids.size(0);
  // Batch entries are frames (count > 1, CUDA) or row bands of one frame (CPU); all views.
  const int64_t bands = count == 1 && device_.is_cpu() ? RowBands(height_) : 1;
  const int64_t batch = count * bands;
  const int64_t rows = height_ / bands;
  const at::Tensor batch_grids =
      grids.view({count, 2, bands, rows, width_}).permute({0, 2, 3, 4, 1}).flatten(0, 1);
  // expand() is a stride-0 view: no copy of the source per batch entry.
  const at::Tensor source =
      batch == 1 ? state_.source : state_.source.expand({batch, -1, -1, -1});
  const at::Tensor sampled =
      at::grid_sampler(source, batch_grids, kInterpolationBilinear,
                       black_fill_ ? kPaddingZeros : kPaddingBorder, /*align_corners=*/false);
  // One pass: NCHW->NHWC permute plus float->uint8 conversion. The conversion truncates, which
  // rounds to nearest thanks to the +0.5 in the source; the values stay within [0, 255.5) because
  // bilinear weights are non-negative and sum to at most 1, so no clamp pass is needed.
  const at::Tensor hwc = sampled.permute({0, 2, 3, 1});  // [batch, rows, W, 3]
  const at::Tensor out = rgb.view({batch, rows, width_, 3});
  if (device_.is_cpu()) {
    out.copy_(hwc);
    return;
  }
  // Convert on the device, then one contiguous download of a third of the bytes.
  at::Tensor staged = at::empty(out.sizes(), sampled.options().dtype(at::kByte));
  staged.copy_(hwc);
  out.copy_(staged);
}

// Swallows progress and timings; for WarmUp.
class NullControl final : public RolloutControl {
 public:
  bool cancelled() const override { return false; }
  void OnStep(ModelStage, int, int) override {}
  void AddStageTime(ModelStage, absl::Duration) override {}
};

class WarpModel final : public Model {
 public:
  WarpModel(c10::Device device, int frames_per_chunk)
      : device_(device), frames_per_chunk_(frames_per_chunk) {
    descriptor_.name = kModelName;
    descriptor_.preset = "";
    descriptor_.native_width = kNativeWidth;
    descriptor_.native_height = kNativeHeight;
    descriptor_.rollout_state_bytes = EstimateRolloutBytes();
  }

  const ModelDescriptor& descriptor() const override { return descriptor_; }

  absl::Status WarmUp() override;

  absl::StatusOr<std::unique_ptr<ModelRollout>> StartRollout(const RolloutSpec& spec,
                                                             RolloutControl& control) override;

 private:
  // At native resolution: the source image plus one step's temporaries.
  uint64_t EstimateRolloutBytes() const {
    const uint64_t pixels = static_cast<uint64_t>(kNativeWidth) * kNativeHeight;
    const int step = device_.is_cpu() ? kCpuFramesPerStep : kCudaFramesPerStep;
    return pixels * (3 * sizeof(float) + step * kStepBytesPerPixel);
  }

  std::unique_ptr<ModelRollout> Encode(const RolloutSpec& spec, const WarpOptions& options) const;

  const c10::Device device_;
  const int frames_per_chunk_;
  ModelDescriptor descriptor_;
};

absl::StatusOr<std::unique_ptr<ModelRollout>> WarpModel::StartRollout(const RolloutSpec& spec,
                                                                      RolloutControl& control) {
  if (control.cancelled()) return absl::CancelledError("rollout cancelled");
  absl::StatusOr<WarpOptions> options = ParseOptions(spec.options);
  if (!options.ok()) return options.status();
  if (absl::Status valid = ValidateSpec(spec); !valid.ok()) return valid;
  StageTimer timer(control, ModelStage::kImageEncode);
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout =
      CatchTorch("image encode", [&]() -> absl::StatusOr<std::unique_ptr<ModelRollout>> {
        return Encode(spec, *options);
      });
  if (rollout.ok()) control.OnStep(ModelStage::kImageEncode, 1, 1);
  return rollout;
}

std::unique_ptr<ModelRollout> WarpModel::Encode(const RolloutSpec& spec,
                                                const WarpOptions& options) const {
  c10::InferenceMode inference;
  const ResizeCrop plan =
      PlanResizeCrop(spec.image.width, spec.image.height, spec.width, spec.height);
  const Pinhole source_k = RemapIntrinsics(spec.cameras[0], plan);
  const RigidPose origin = PoseFromC2w(spec.cameras[0].c2w);
  std::vector<FrameMap> maps;
  maps.reserve(spec.cameras.size());
  for (const CameraFrame& camera : spec.cameras) {
    const RigidPose relative = RelativeTo(origin, PoseFromC2w(camera.c2w));
    maps.push_back(ComputeFrameMap(relative, RemapIntrinsics(camera, plan), source_k,
                                   options.depth, spec.width, spec.height));
  }
  WarpState state;
  state.source = EncodeImage(spec.image, plan, spec.width, spec.height, device_);
  state.u_centres = PixelCentres(spec.width, device_);
  state.v_centres = PixelCentres(spec.height, device_);
  UploadMaps(maps, device_, state);
  return std::make_unique<WarpRollout>(std::move(state), device_, spec.width, spec.height,
                                       static_cast<int>(spec.cameras.size()), frames_per_chunk_,
                                       options.black_fill);
}

absl::Status WarpModel::WarmUp() {
  constexpr int kWidth = 64;
  constexpr int kHeight = 32;
  RolloutSpec spec;
  spec.width = kWidth;
  spec.height = kHeight;
  spec.image.width = kWidth;
  spec.image.height = kHeight;
  spec.image.pixels.resize(kWidth * kHeight * 3);
  for (size_t i = 0; i < spec.image.pixels.size(); ++i) {
    spec.image.pixels[i] = static_cast<uint8_t>(i % 251);
  }
  CameraFrame camera;
  camera.c2w = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  camera.fx = camera.fy = kWidth;
  camera.cx = kWidth / 2.0;
  camera.cy = kHeight / 2.0;
  spec.cameras = {camera, camera};
  spec.cameras[1].c2w[3] = 0.1;  // a small sideways step, so the grid math is not trivial
  NullControl control;
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = StartRollout(spec, control);
  if (!rollout.ok()) return rollout.status();
  while (true) {
    absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
    if (!chunk.ok()) return chunk.status();
    if (!chunk->has_value()) return absl::OkStatus();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> CreateWarpModel(const WarpModelConfig& config) {
  if (config.frames_per_chunk <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("frames_per_chunk: must be > 0 (got ", config.frames_per_chunk, ")"));
  }
  return CatchTorch("create", [&]() -> absl::StatusOr<std::unique_ptr<Model>> {
    absl::StatusOr<c10::Device> device = ParseTorchDevice(config.device, /*check_present=*/true);
    if (!device.ok()) return device.status();
    return std::make_unique<WarpModel>(*device, config.frames_per_chunk);
  });
}

}  // namespace wmserve::worker
