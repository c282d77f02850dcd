#include "worker/models/sana/camera.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/atan2.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "worker/models/sana/errors.h"

namespace wmserve::worker::sana {
namespace {

std::string Fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// Python's round(): half to even.
double RoundHalfEven(double x) {
  const double r = std::round(x);  // half away from zero
  if (std::abs(x - std::trunc(x)) == 0.5) return 2.0 * std::round(x / 2.0);
  return r;
}

// --- small float64 geometry on plain arrays (host-side preprocessing) -----------------------

using Mat4 = std::array<double, 16>;  // row-major

Mat4 RigidInverse(const Mat4& m) {
  Mat4 out{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) out[i * 4 + j] = m[j * 4 + i];
  }
  for (int i = 0; i < 3; ++i) {
    double s = 0;
    for (int k = 0; k < 3; ++k) s += out[i * 4 + k] * m[k * 4 + 3];
    out[i * 4 + 3] = -s;
  }
  out[15] = 1.0;
  return out;
}

Mat4 MatMul(const Mat4& a, const Mat4& b) {
  Mat4 out{};
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      double s = 0;
      for (int k = 0; k < 4; ++k) s += a[i * 4 + k] * b[k * 4 + j];
      out[i * 4 + j] = s;
    }
  }
  return out;
}

// --- 3-vectors of tensors (model-side geometry: elementwise ops only, any device) -----------

struct V3 {
  at::Tensor x, y, z;
};

at::Tensor Dot(const V3& a, const V3& b) { return a.x.mul(b.x).add(a.y.mul(b.y)).add(a.z.mul(b.z)); }

V3 Cross(const V3& a, const V3& b) {
  return {a.y.mul(b.z).sub(a.z.mul(b.y)), a.z.mul(b.x).sub(a.x.mul(b.z)),
          a.x.mul(b.y).sub(a.y.mul(b.x))};
}

V3 Scale(const V3& a, const at::Tensor& s) { return {a.x.mul(s), a.y.mul(s), a.z.mul(s)}; }

V3 Add(const V3& a, const V3& b) { return {a.x.add(b.x), a.y.add(b.y), a.z.add(b.z)}; }

// F.normalize semantics: v / max(|v|, eps).
V3 Normalize(const V3& v, double eps) {
  const at::Tensor inv = Dot(v, v).sqrt().clamp_min(eps).reciprocal();
  return Scale(v, inv);
}

// 3x3 rotation as nine (B, T, 1, 1) tensors, r[i][j] = R_ij.
struct Rot {
  at::Tensor r[3][3];
  V3 Row(int i) const { return {r[i][0], r[i][1], r[i][2]}; }
  V3 Column(int j) const { return {r[0][j], r[1][j], r[2][j]}; }
  V3 Apply(const V3& v) const { return {Dot(Row(0), v), Dot(Row(1), v), Dot(Row(2), v)}; }
  V3 ApplyTransposed(const V3& v) const {
    return {Dot(Column(0), v), Dot(Column(1), v), Dot(Column(2), v)};
  }
};

// Unpacked (B, T, 20) camera conditions, float64, each (B, T, 1, 1) for broadcasting over H x W.
struct CamParams {
  Rot rot;
  V3 t;
  at::Tensor fx, fy, cx, cy;
};

CamParams Unpack(const at::Tensor& camera_conditions, const char* fn) {
  if (camera_conditions.dim() != 3 || camera_conditions.size(2) != 20) {
    std::string shape = "[";
    for (int64_t i = 0; i < camera_conditions.dim(); ++i) {
      shape += (i ? "," : "") + std::to_string(camera_conditions.size(i));
    }
    throw InvalidInputError(std::string(fn) + ": camera_conditions must be (B, T, 20), got " +
                            shape + "]");
  }
  if (!camera_conditions.is_floating_point()) {
    throw InvalidInputError(std::string(fn) + ": camera_conditions must be floating point");
  }
  const at::Tensor c = camera_conditions.to(at::kDouble).unsqueeze(-1).unsqueeze(-1);
  auto col = [&](int64_t k) { return c.select(2, k); };  // (B, T, 1, 1)
  CamParams p;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) p.rot.r[i][j] = col(i * 4 + j);
  }
  p.t = {col(3), col(7), col(11)};
  p.fx = col(16);
  p.fy = col(17);
  p.cx = col(18);
  p.cy = col(19);
  return p;
}

// Pixel grid u (1, 1, 1, W) and v (1, 1, H, 1), float64 on `options`' device.
std::pair<at::Tensor, at::Tensor> Grid(int64_t height, int64_t width,
                                       const at::TensorOptions& options) {
  const at::Tensor u = at::arange(width, options).view({1, 1, 1, width});
  const at::Tensor v = at::arange(height, options).view({1, 1, height, 1});
  return {u, v};
}

// Unnormalised camera-frame directions ((u - cx)/fx, (v - cy)/fy, 1), each (B, T, H, W).
V3 UnprojectGrid(const CamParams& p, const at::Tensor& u, const at::Tensor& v,
                 const std::vector<int64_t>& full) {
  return {u.sub(p.cx).div(p.fx).expand(full), v.sub(p.cy).div(p.fy).expand(full),
          at::ones_like(p.fx).expand(full)};
}

c10::ScalarType OutputType(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

// --- frame-count rules -----------------------------------------------------------------------

const char* RolloutModeName(RolloutMode mode) {
  return mode == RolloutMode::kStreaming ? "streaming" : "bidirectional";
}

int FrameCountMultiple(const SanaConfig& config, RolloutMode mode) {
  return mode == RolloutMode::kStreaming ? config.vae_temporal_stride * config.chunk_size
                                         : config.vae_temporal_stride;
}

void CheckNumFrames(const SanaConfig& config, int num_frames, RolloutMode mode) {
  const int m = FrameCountMultiple(config, mode);
  if (num_frames > m && (num_frames - 1) % m == 0) return;
  throw InvalidInputError("num_frames " + std::to_string(num_frames) + ": " +
                          RolloutModeName(mode) + " rollouts need " + std::to_string(m) +
                          "k+1 frames (" + std::to_string(m + 1) + ", " +
                          std::to_string(2 * m + 1) + ", " + std::to_string(3 * m + 1) + ", ...)");
}

std::vector<std::pair<int, int>> StreamingChunks(const SanaConfig& config, int latent_frames) {
  const int c = config.chunk_size;
  if (c <= 0 || latent_frames <= c || (latent_frames - 1) % c != 0) {
    throw InvalidInputError("latent_frames " + std::to_string(latent_frames) +
                            ": streaming rollouts need " + std::to_string(c) + "k+1 latent frames");
  }
  std::vector<std::pair<int, int>> chunks = {{0, 1 + c}};
  for (int begin = 1 + c; begin < latent_frames; begin += c) chunks.emplace_back(begin, begin + c);
  return chunks;
}

// --- intrinsics handling ---------------------------------------------------------------------

ResizeCropPlan PlanResizeCenterCrop(int src_width, int src_height, int target_width,
                                    int target_height) {
  if (src_width <= 0 || src_height <= 0 || target_width <= 0 || target_height <= 0) {
    throw InvalidInputError("resize: image sizes must be positive (source " +
                            std::to_string(src_width) + "x" + std::to_string(src_height) +
                            ", target " + std::to_string(target_width) + "x" +
                            std::to_string(target_height) + ")");
  }
  ResizeCropPlan p;
  p.src_width = src_width;
  p.src_height = src_height;
  p.target_width = target_width;
  p.target_height = target_height;
  const double scale = std::max(static_cast<double>(target_height) / src_height,
                                static_cast<double>(target_width) / src_width);
  p.resized_width = std::max(target_width, static_cast<int>(RoundHalfEven(src_width * scale)));
  p.resized_height = std::max(target_height, static_cast<int>(RoundHalfEven(src_height * scale)));
  p.crop_left = (p.resized_width - target_width) / 2;
  p.crop_top = (p.resized_height - target_height) / 2;
  return p;
}

Intrinsics TransformIntrinsicsForCrop(const Intrinsics& in, const ResizeCropPlan& plan) {
  const double sx = static_cast<double>(plan.resized_width) / plan.src_width;
  const double sy = static_cast<double>(plan.resized_height) / plan.src_height;
  return {in.fx * sx, in.fy * sy, in.cx * sx - plan.crop_left, in.cy * sy - plan.crop_top};
}

std::vector<Intrinsics> FitIntrinsicsSequence(const std::vector<Intrinsics>& in, int num_frames) {
  if (num_frames < 1) {
    throw InvalidInputError("intrinsics: num_frames " + std::to_string(num_frames) +
                            " must be >= 1");
  }
  if (in.empty()) throw InvalidInputError("intrinsics: none given");
  const int n = static_cast<int>(in.size());
  if (n >= num_frames) return std::vector<Intrinsics>(in.begin(), in.begin() + num_frames);
  if (n == 1) return std::vector<Intrinsics>(static_cast<size_t>(num_frames), in[0]);
  // np.interp(linspace(0, 1, num_frames), linspace(0, 1, n), values).
  std::vector<Intrinsics> out(static_cast<size_t>(num_frames));
  for (int i = 0; i < num_frames; ++i) {
    const double pos = static_cast<double>(i) * (n - 1) / (num_frames - 1);
    const int k = std::min(static_cast<int>(pos), n - 2);
    const double w = pos - k;
    const Intrinsics& a = in[static_cast<size_t>(k)];
    const Intrinsics& b = in[static_cast<size_t>(k) + 1];
    out[static_cast<size_t>(i)] = {a.fx + (b.fx - a.fx) * w, a.fy + (b.fy - a.fy) * w,
                                   a.cx + (b.cx - a.cx) * w, a.cy + (b.cy - a.cy) * w};
  }
  return out;
}

// --- preprocessing -----------------------------------------------------------------------------

CameraGeometry CameraGeometry::FromConfig(const SanaConfig& config) {
  CameraGeometry g;
  g.pixel_height = config.pixel_height;
  g.pixel_width = config.pixel_width;
  g.temporal_stride = config.vae_temporal_stride;
  g.spatial_stride = config.vae_spatial_stride;
  return g;
}

CameraTensors PrepareCamera(const std::vector<CameraPose>& c2w,
                            const std::vector<Intrinsics>& intrinsics_px,
                            const CameraGeometry& geometry, c10::ScalarType dtype) {
  const auto frames = static_cast<int64_t>(c2w.size());
  at::Tensor poses = at::empty({frames, 4, 4}, at::TensorOptions().dtype(at::kDouble));
  at::Tensor intr =
      at::empty({static_cast<int64_t>(intrinsics_px.size()), 4}, at::TensorOptions().dtype(at::kDouble));
  double* p = poses.data_ptr<double>();
  for (const CameraPose& pose : c2w) p = std::copy(pose.begin(), pose.end(), p);
  double* q = intr.data_ptr<double>();
  for (const Intrinsics& k : intrinsics_px) {
    *q++ = k.fx;
    *q++ = k.fy;
    *q++ = k.cx;
    *q++ = k.cy;
  }
  return PrepareCamera(poses, intr, geometry, dtype);
}

CameraTensors PrepareCamera(const at::Tensor& c2w, const at::Tensor& intrinsics_px,
                            const CameraGeometry& geometry, c10::ScalarType dtype) {
  if (c2w.dim() != 3 || c2w.size(1) != 4 || c2w.size(2) != 4 || c2w.size(0) < 1) {
    throw InvalidInputError("cameras: c2w must be (F >= 1, 4, 4)");
  }
  const int64_t F = c2w.size(0);
  if (intrinsics_px.dim() != 2 || intrinsics_px.size(0) != F || intrinsics_px.size(1) != 4) {
    throw InvalidInputError("cameras: intrinsics must be (F, 4) with F = " + std::to_string(F) +
                            " (one [fx, fy, cx, cy] per pose)");
  }
  if (!c2w.is_floating_point() || !intrinsics_px.is_floating_point()) {
    throw InvalidInputError("cameras: c2w and intrinsics must be floating point");
  }
  if (geometry.temporal_stride < 1 || geometry.spatial_stride < 1 ||
      geometry.latent_height() < 1 || geometry.latent_width() < 1) {
    throw InvalidInputError("cameras: invalid geometry (strides must be >= 1 and the latent grid "
                            "non-empty)");
  }
  const at::Tensor pose_t = c2w.to(at::TensorOptions().dtype(at::kDouble).device(c10::kCPU))
                                .contiguous();
  const at::Tensor intr_t =
      intrinsics_px.to(at::TensorOptions().dtype(at::kDouble).device(c10::kCPU)).contiguous();
  const double* pose_data = pose_t.data_ptr<double>();
  const double* intr_data = intr_t.data_ptr<double>();

  std::vector<Mat4> poses(static_cast<size_t>(F));
  std::vector<std::array<double, 4>> intr_lat(static_cast<size_t>(F));
  const int lh = geometry.latent_height();
  const int lw = geometry.latent_width();
  const double sx = static_cast<double>(lw) / geometry.pixel_width;
  const double sy = static_cast<double>(lh) / geometry.pixel_height;
  for (int64_t f = 0; f < F; ++f) {
    Mat4& m = poses[static_cast<size_t>(f)];
    std::copy(pose_data + f * 16, pose_data + f * 16 + 16, m.begin());
    const std::string field = "cameras[" + std::to_string(f) + "]";
    for (int i = 0; i < 16; ++i) {
      if (!std::isfinite(m[i])) {
        throw InvalidInputError(field + ".c2w value " + std::to_string(i) + " is not finite");
      }
    }
    if (m[12] != 0 || m[13] != 0 || m[14] != 0 || m[15] != 1) {
      throw InvalidInputError(field + ".c2w last row must be 0 0 0 1 (got " + Fmt(m[12]) + " " +
                              Fmt(m[13]) + " " + Fmt(m[14]) + " " + Fmt(m[15]) + ")");
    }
    const double* k = intr_data + f * 4;
    static const char* kNames[4] = {"fx", "fy", "cx", "cy"};
    for (int i = 0; i < 4; ++i) {
      if (!std::isfinite(k[i]) || (i < 2 && k[i] <= 0)) {
        throw InvalidInputError(field + "." + kNames[i] + " = " + Fmt(k[i]) + " must be " +
                                (i < 2 ? "finite and > 0" : "finite"));
      }
    }
    intr_lat[static_cast<size_t>(f)] = {k[0] * sx, k[1] * sy, k[2] * sx, k[3] * sy};
  }

  // Relative poses: P0^-1 Pi; frame 0 exactly the identity.
  const Mat4 first_inv = RigidInverse(poses[0]);
  std::vector<Mat4> rel(static_cast<size_t>(F));
  rel[0] = Mat4{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  for (int64_t f = 1; f < F; ++f) {
    rel[static_cast<size_t>(f)] = MatMul(first_inv, poses[static_cast<size_t>(f)]);
  }

  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  CameraTensors out;
  at::Tensor rel_t = at::empty({F, 4, 4}, f64);
  at::Tensor intr_lat_t = at::empty({F, 4}, f64);
  for (int64_t f = 0; f < F; ++f) {
    std::copy(rel[static_cast<size_t>(f)].begin(), rel[static_cast<size_t>(f)].end(),
              rel_t.data_ptr<double>() + f * 16);
    std::copy(intr_lat[static_cast<size_t>(f)].begin(), intr_lat[static_cast<size_t>(f)].end(),
              intr_lat_t.data_ptr<double>() + f * 4);
  }

  // One camera row per latent frame, sampled at pixel frames 0, s, 2s, ...
  const int s = geometry.temporal_stride;
  const auto T = static_cast<int64_t>(geometry.LatentFrames(static_cast<int>(F)));
  at::Tensor cond = at::empty({T, 20}, f64);
  double* c = cond.data_ptr<double>();
  for (int64_t i = 0; i < T; ++i) {
    const size_t f = static_cast<size_t>(i * s);
    c = std::copy(rel[f].begin(), rel[f].end(), c);
    c = std::copy(intr_lat[f].begin(), intr_lat[f].end(), c);
  }

  // Chunk Plücker: latent frame i uses raw frames [max(0, s*i - (s-1)), +s), the tail padded by
  // repeating the window's last frame; channel = 6*j + component, components (d, o x d).
  at::Tensor plucker = at::empty({6 * static_cast<int64_t>(s), T, lh, lw}, f64);
  double* pl = plucker.data_ptr<double>();
  const int64_t plane = static_cast<int64_t>(lh) * lw;
  for (int64_t i = 0; i < T; ++i) {
    const int64_t start = std::max<int64_t>(0, i * s - (s - 1));
    for (int j = 0; j < s; ++j) {
      const size_t f = static_cast<size_t>(std::min<int64_t>(start + j, F - 1));
      const Mat4& m = rel[f];
      const std::array<double, 4>& k = intr_lat[f];
      const double o[3] = {m[3], m[7], m[11]};
      for (int v = 0; v < lh; ++v) {
        for (int u = 0; u < lw; ++u) {
          const double dc[3] = {(u - k[2]) / k[0], (v - k[3]) / k[1], 1.0};
          double d[3];
          for (int r = 0; r < 3; ++r) d[r] = m[r * 4] * dc[0] + m[r * 4 + 1] * dc[1] + m[r * 4 + 2] * dc[2];
          const double n = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
          for (double& x : d) x /= n;
          const double mo[3] = {o[1] * d[2] - o[2] * d[1], o[2] * d[0] - o[0] * d[2],
                                o[0] * d[1] - o[1] * d[0]};
          const double vals[6] = {d[0], d[1], d[2], mo[0], mo[1], mo[2]};
          for (int comp = 0; comp < 6; ++comp) {
            const int64_t channel = 6 * j + comp;
            pl[(channel * T + i) * plane + v * lw + u] = vals[comp];
          }
        }
      }
    }
  }

  out.c2w_rel = rel_t.to(dtype);
  out.intrinsics_latent = intr_lat_t.to(dtype);
  out.camera_conditions = cond.to(dtype);
  out.chunk_plucker = plucker.to(dtype);
  return out;
}

// --- model-side geometry ------------------------------------------------------------------------

at::Tensor InvertRigid(const at::Tensor& transforms) {
  if (transforms.dim() < 2 || transforms.size(-1) != 4 || transforms.size(-2) != 4) {
    throw InvalidInputError("InvertRigid: expected (..., 4, 4)");
  }
  const at::Tensor r = transforms.narrow(-2, 0, 3).narrow(-1, 0, 3);
  const at::Tensor t = transforms.narrow(-2, 0, 3).narrow(-1, 3, 1);
  const at::Tensor rt = r.transpose(-1, -2);
  at::Tensor out = at::zeros_like(transforms);
  out.narrow(-2, 0, 3).narrow(-1, 0, 3).copy_(rt);
  out.narrow(-2, 0, 3).narrow(-1, 3, 1).copy_(-rt.matmul(t));
  out.select(-2, 3).select(-1, 3).fill_(1.0);
  return out;
}

namespace {

// What ComputeRayMats and ComputeAbsMap share: the unpacked cameras and every latent pixel's
// ray in camera coordinates, in float64 on the input's device.
struct PixelRays {
  CamParams p;
  at::TensorOptions options;
  int64_t batch, frames;
  at::Tensor u, v;  // pixel-centre coordinates
  V3 d_cam;
};

PixelRays UnprojectPixels(const at::Tensor& camera_conditions, int64_t height, int64_t width,
                          const char* caller) {
  if (height < 1 || width < 1) throw InvalidInputError(std::string(caller) + ": empty grid");
  PixelRays r{Unpack(camera_conditions, caller),
              at::TensorOptions().dtype(at::kDouble).device(camera_conditions.device()),
              camera_conditions.size(0), camera_conditions.size(1), {}, {}, {}};
  std::tie(r.u, r.v) = Grid(height, width, r.options);
  r.d_cam = UnprojectGrid(r.p, r.u, r.v, {r.batch, r.frames, height, width});
  return r;
}

}  // namespace

at::Tensor ComputeRayMats(const at::Tensor& camera_conditions, int64_t height, int64_t width) {
  const PixelRays rays = UnprojectPixels(camera_conditions, height, width, "ComputeRayMats");
  const CamParams& p = rays.p;
  const auto& options = rays.options;
  const int64_t B = rays.batch, T = rays.frames;
  const V3& d_cam = rays.d_cam;
  const V3 d_world = p.rot.Apply(d_cam);
  const V3 z = Normalize(d_world, 1e-6);
  const V3 x = Normalize(Cross(p.rot.Column(1), z), 1e-6);
  const V3 y = Normalize(Cross(z, x), 1e-6);
  // Rows of R_w2l are x, y, z; translation -R_w2l t.
  const at::Tensor zero = at::zeros_like(z.x);
  const at::Tensor one = at::ones_like(z.x);
  const at::Tensor tx = Dot(x, p.t).neg();
  const at::Tensor ty = Dot(y, p.t).neg();
  const at::Tensor tz = Dot(z, p.t).neg();
  at::Tensor raymats =
      at::stack({x.x, x.y, x.z, tx, y.x, y.y, y.z, ty, z.x, z.y, z.z, tz, zero, zero, zero, one},
                -1)
          .view({B, T, height, width, 4, 4});
  const at::Tensor nan_ray = d_world.x.isnan()
                                 .logical_or(d_world.y.isnan())
                                 .logical_or(d_world.z.isnan())
                                 .unsqueeze(-1)
                                 .unsqueeze(-1);
  raymats = at::where(nan_ray, at::eye(4, options).expand_as(raymats), raymats);
  return raymats.to(OutputType(camera_conditions));
}

at::Tensor ComputeAbsMap(const at::Tensor& camera_conditions, int64_t height, int64_t width) {
  const PixelRays rays = UnprojectPixels(camera_conditions, height, width, "ComputeAbsMap");
  const CamParams& p = rays.p;
  const at::Tensor& u = rays.u;
  const at::Tensor& v = rays.v;
  const V3& d_cam = rays.d_cam;
  const at::Tensor nan_ray = d_cam.x.isnan().logical_or(d_cam.y.isnan()).logical_or(d_cam.z.isnan());
  const V3 dir = Normalize(p.rot.Apply(d_cam), 1e-8);
  const at::Tensor lat = at::atan2(dir.y.neg(), dir.x.mul(dir.x).add(dir.z.mul(dir.z)).sqrt());
  // Rotate the ray by delta = 0.1 rad towards world up (0, -1, 0) (Rodrigues about k = d x up)
  // and project it back; the image-plane displacement, normalised, is the up-map.
  const V3 k = Normalize(V3{dir.z, at::zeros_like(dir.x), dir.x.neg()}, 1e-8);
  const double delta = 0.1;
  // Reference quirk: the third Rodrigues term is written `k * (k * (v * 1).sum(-1))`, i.e.
  // k (elementwise) k times the *sum of v's components*, not k (k . v). Since k is orthogonal to v
  // the textbook term vanishes; the reference's does not, so reproduce it.
  const at::Tensor v_sum = dir.x.add(dir.y).add(dir.z).mul(1.0 - std::cos(delta));
  const V3 k_sq = {k.x.mul(k.x), k.y.mul(k.y), k.z.mul(k.z)};
  const V3 rotated = Add(Add(Scale(dir, at::full_like(dir.x, std::cos(delta))),
                             Scale(Cross(k, dir), at::full_like(dir.x, std::sin(delta)))),
                         Scale(k_sq, v_sum));
  const V3 back = p.rot.ApplyTransposed(rotated);
  // Pinhole projection (UCM with xi = 0), minus the pixel's own position.
  const at::Tensor du = back.x.div(back.z).mul(p.fx).add(p.cx).sub(u);
  const at::Tensor dv = back.y.div(back.z).mul(p.fy).add(p.cy).sub(v);
  const at::Tensor inv = du.mul(du).add(dv.mul(dv)).sqrt().clamp_min(1e-8).reciprocal();
  at::Tensor absmap = at::stack({du.mul(inv), dv.mul(inv), lat}, -1);
  absmap = absmap.masked_fill(nan_ray.unsqueeze(-1), 0.0);
  return absmap.to(OutputType(camera_conditions));
}

}  // namespace wmserve::worker::sana
