#include "worker/worker_agent.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/logging.h"
#include "worker/models/torch_runtime.h"
#include "worker/rollout_runner.h"
#include "wmserve/v1/worker.grpc.pb.h"

namespace wmserve::worker {
namespace {

using log::Kv;

std::string HostName() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

// One Connect stream. Writes from any thread are serialised by `write_mu_` (the sync API allows
// one writer at a time, concurrent with the reader).
class WorkerAgent::Connection {
 public:
  Connection(std::unique_ptr<grpc::ClientContext> ctx,
             std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::SchedulerMessage>>
                 stream)
      : ctx_(std::move(ctx)), stream_(std::move(stream)) {}

  bool Write(const v1::WorkerMessage& msg) ABSL_LOCKS_EXCLUDED(write_mu_) {
    absl::MutexLock lock(&write_mu_);
    if (broken_) return false;
    if (!stream_->Write(msg)) broken_ = true;
    return !broken_;
  }
  bool Read(v1::SchedulerMessage* msg) { return stream_->Read(msg); }
  void Cancel() { ctx_->TryCancel(); }
  grpc::Status Finish() {
    {
      absl::MutexLock lock(&write_mu_);
      if (!broken_) stream_->WritesDone();
      broken_ = true;
    }
    return stream_->Finish();
  }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::SchedulerMessage>> stream_;
  absl::Mutex write_mu_;
  bool broken_ ABSL_GUARDED_BY(write_mu_) = false;
};

namespace {

// Relays a rollout's events to the scheduler over the connection that assigned it.
class StreamSink : public RolloutEventSink {
 public:
  StreamSink(std::function<bool(const v1::WorkerMessage&)> write, std::string rollout_id)
      : write_(std::move(write)), rollout_id_(std::move(rollout_id)) {}
  void Emit(v1::RolloutEvent event) override {
    v1::WorkerMessage msg;
    msg.mutable_update()->set_rollout_id(rollout_id_);
    *msg.mutable_update()->mutable_event() = std::move(event);
    write_(msg);
  }

 private:
  std::function<bool(const v1::WorkerMessage&)> write_;
  const std::string rollout_id_;
};

}  // namespace

WorkerAgent::WorkerAgent(WorkerAgentOptions options, ModelLoader loader,
                         metrics::WorkerMetrics* metrics, DeviceMemoryProbe* memory)
    : options_(std::move(options)), loader_(std::move(loader)), metrics_(metrics),
      memory_(memory) {}

void WorkerAgent::PublishState() {
  if (metrics_ == nullptr) return;
  const char* state = "LOADING";
  if (draining_.load()) {
    state = "DRAINING";
  } else if (ready()) {
    absl::MutexLock lock(&mu_);
    int busy = 0;
    for (const auto& [id, r] : running_) busy += r->finished ? 0 : 1;
    state = busy >= options_.max_concurrent ? "BUSY" : "READY";
  }
  metrics_->SetState(state);
}

// The memory rollouts on this worker compete for: the GPU's (NVML) on CUDA, the host's on CPU.
WorkerAgent::DeviceCapacity WorkerAgent::Capacity() const {
  DeviceCapacity c{HostTotalBytes(), HostAvailableBytes()};
  if (memory_ != nullptr && memory_->is_cuda()) {
    for (const auto& [pool, bytes] : memory_->Sample(0, 0).pools) {
      if (pool == "total") c.total = bytes;
      if (pool == "free") c.free = bytes;
    }
  }
  return c;
}

void WorkerAgent::PublishMemory() {
  if (metrics_ == nullptr || memory_ == nullptr) return;
  uint64_t weights = 0, state = 0;
  {
    absl::MutexLock lock(&mu_);
    int busy = 0;
    for (const auto& [id, r] : running_) busy += r->finished ? 0 : 1;
    for (const auto& m : models_) {
      weights += m->descriptor().weights_bytes;
      state = std::max(state, m->descriptor().rollout_state_bytes * static_cast<uint64_t>(busy));
    }
  }
  for (const auto& [pool, bytes] : memory_->Sample(weights, state).pools) {
    metrics_->SetMemory(memory_->gpu(), memory_->uuid(), pool, static_cast<double>(bytes));
  }
}

WorkerAgent::~WorkerAgent() {
  Shutdown();
  if (loader_thread_.joinable()) loader_thread_.join();
  JoinAll();
}

void WorkerAgent::LoadModels() {
  const absl::Time start = absl::Now();
  WM_LOG(kInfo, "worker_state") << Kv("state", "LOADING") << Kv("device", options_.device);
  auto models = loader_();
  if (!models.ok()) {
    WM_LOG(kError, "model_load_failed") << Kv("status", models.status().ToString());
    load_failed_.store(true);
    Shutdown();
    return;
  }
  for (auto& m : *models) {
    const absl::Time warm = absl::Now();
    if (absl::Status s = m->WarmUp(); !s.ok()) {
      WM_LOG(kError, "model_warmup_failed") << Kv("model", m->descriptor().name)
                                            << Kv("status", s.ToString());
      load_failed_.store(true);
      Shutdown();
      return;
    }
    WM_LOG(kInfo, "model_ready") << Kv("model", m->descriptor().name)
                                 << Kv("warmup_s", absl::ToDoubleSeconds(absl::Now() - warm));
  }
  {
    absl::MutexLock lock(&mu_);
    models_ = *std::move(models);
  }
  ready_.store(true);
  WM_LOG(kInfo, "worker_state") << Kv("state", "READY")
                                << Kv("load_s", absl::ToDoubleSeconds(absl::Now() - start));
}

Model* WorkerAgent::FindModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  for (auto& m : models_) {
    if (m->descriptor().name == name) return m.get();
  }
  return nullptr;
}

void WorkerAgent::Shutdown() {
  shutdown_.store(true);
  absl::MutexLock lock(&mu_);
  for (auto& [id, r] : running_) r->cancelled.store(true);
  if (connection_ != nullptr) connection_->Cancel();
}

void WorkerAgent::CancelAll() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, r] : running_) r->cancelled.store(true);
}

void WorkerAgent::JoinFinished() {
  std::vector<std::unique_ptr<RunningRollout>> done;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = running_.begin(); it != running_.end();) {
      if (it->second->finished) {
        done.push_back(std::move(it->second));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& r : done) r->thread.join();
}

void WorkerAgent::JoinAll() {
  std::map<std::string, std::unique_ptr<RunningRollout>> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(running_);
  }
  for (auto& [id, r] : all) {
    if (r->thread.joinable()) r->thread.join();
  }
}

int WorkerAgent::Run() {
  loader_thread_ = std::thread([this] { LoadModels(); });
  absl::Duration backoff = options_.reconnect_min;
  while (!shutdown_.load() && !draining_.load()) {
    const absl::Time attempt = absl::Now();
    Serve();
    CancelAll();
    JoinAll();
    if (shutdown_.load() || draining_.load()) break;
    // A session that lasted resets the back-off; a refused connection grows it.
    backoff = (absl::Now() - attempt > absl::Seconds(10)) ? options_.reconnect_min
                                                          : std::min(backoff * 2, options_.reconnect_max);
    absl::SleepFor(backoff);
  }
  CancelAll();
  JoinAll();
  if (loader_thread_.joinable()) loader_thread_.join();
  WM_LOG(kInfo, "worker_stopped") << Kv("drained", draining_.load());
  return load_failed_.load() ? 2 : 0;
}

void WorkerAgent::Serve() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_mb << 20);
  args.SetMaxSendMessageSize(options_.max_message_mb << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  auto channel = grpc::CreateCustomChannel(options_.scheduler_address,
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = v1::WorkerGateway::NewStub(channel);
  auto ctx = std::make_unique<grpc::ClientContext>();
  grpc::ClientContext* raw_ctx = ctx.get();
  Connection conn(std::move(ctx), stub->Connect(raw_ctx));
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_.load()) return;
    connection_ = &conn;
  }

  v1::WorkerMessage reg_msg;
  v1::Register* reg = reg_msg.mutable_register_();
  reg->set_worker_name(options_.name);
  reg->set_device(options_.device);
  reg->set_host(HostName());
  // The models this worker will serve are known before they are loaded (config), so the
  // scheduler can queue for them while we warm up.
  for (const std::string& model : options_.models) reg->add_models()->set_name(model);
  reg->set_max_concurrent_rollouts(static_cast<uint32_t>(options_.max_concurrent));
  const DeviceCapacity capacity = Capacity();
  reg->set_memory_total_bytes(capacity.total);
  reg->set_memory_free_bytes(capacity.free);
  reg->set_state(ready() ? v1::WORKER_STATE_READY : v1::WORKER_STATE_LOADING);
  reg->set_metrics_endpoint(options_.metrics_endpoint);
  reg->set_pid(static_cast<uint32_t>(::getpid()));

  std::atomic<bool> session_over{false};
  std::thread heartbeat;
  if (conn.Write(reg_msg)) {
    v1::SchedulerMessage msg;
    absl::Duration interval = absl::Seconds(1);
    while (conn.Read(&msg)) {
      switch (msg.msg_case()) {
        case v1::SchedulerMessage::kRegistered: {
          if (msg.registered().heartbeat_interval_ms() > 0) {
            interval = absl::Milliseconds(msg.registered().heartbeat_interval_ms());
          }
          WM_LOG(kInfo, "worker_registered") << Kv("worker_id", msg.registered().worker_id())
                                             << Kv("scheduler", options_.scheduler_address);
          if (!heartbeat.joinable()) {
            heartbeat = std::thread([this, &conn, &session_over, interval] {
              bool reported_ready = false;
              absl::Time next = absl::Now();
              while (!session_over.load()) {
                // Send at once when readiness changes, otherwise every interval.
                if (absl::Now() >= next || (ready() && !reported_ready)) {
                  v1::WorkerMessage hb;
                  hb.mutable_heartbeat()->set_state(ready() ? v1::WORKER_STATE_READY
                                                            : v1::WORKER_STATE_LOADING);
                  const DeviceCapacity capacity = Capacity();
                  hb.mutable_heartbeat()->set_memory_free_bytes(capacity.free);
                  hb.mutable_heartbeat()->set_memory_total_bytes(capacity.total);
                  if (ready()) {
                    absl::MutexLock lock(&mu_);
                    for (const auto& m : models_) {
                      v1::ModelMemory* mm = hb.mutable_heartbeat()->add_model_memory();
                      mm->set_model(m->descriptor().name);
                      mm->set_weights_bytes(m->descriptor().weights_bytes);
                      mm->set_rollout_state_bytes(m->descriptor().rollout_state_bytes);
                      mm->set_max_batch(static_cast<uint32_t>(
                          std::clamp(m->descriptor().max_batch, 1, options_.max_concurrent)));
                    }
                  }
                  reported_ready = ready();
                  if (!conn.Write(hb)) break;
                  PublishState();
                  PublishMemory();
                  next = absl::Now() + interval;
                }
                absl::SleepFor(absl::Milliseconds(20));
              }
            });
          }
          break;
        }
        case v1::SchedulerMessage::kAssign:
          JoinFinished();
          StartRollout(conn, msg.assign().rollout_id(),
                       std::move(*msg.mutable_assign()->mutable_request()));
          break;
        case v1::SchedulerMessage::kCancel: {
          absl::MutexLock lock(&mu_);
          auto it = running_.find(msg.cancel().rollout_id());
          if (it != running_.end()) {
            it->second->cancelled.store(true);
            WM_LOG(kInfo, "rollout_cancel_requested") << Kv("rollout", msg.cancel().rollout_id())
                                                      << Kv("reason", msg.cancel().reason());
          }
          break;
        }
        case v1::SchedulerMessage::kDrain:
          WM_LOG(kInfo, "worker_state") << Kv("state", "DRAINING");
          draining_.store(true);
          break;
        default:
          break;
      }
      if (draining_.load()) {
        // Finish what is running, then leave.
        JoinAll();
        break;
      }
    }
  }
  session_over.store(true);
  if (heartbeat.joinable()) heartbeat.join();
  CancelAll();
  JoinAll();
  {
    absl::MutexLock lock(&mu_);
    connection_ = nullptr;
  }
  grpc::Status status = conn.Finish();
  if (!shutdown_.load() && !draining_.load()) {
    WM_LOG(kWarning, "scheduler_disconnected") << Kv("scheduler", options_.scheduler_address)
                                               << Kv("status", status.error_message());
  }
}

void WorkerAgent::StartRollout(Connection& conn, const std::string& id,
                               v1::RolloutRequest request) {
  auto reject = [&](const absl::Status& s) {
    v1::WorkerMessage msg;
    msg.mutable_done()->set_rollout_id(id);
    msg.mutable_done()->set_status_code(static_cast<int>(s.code()));
    msg.mutable_done()->set_status_message(std::string(s.message()));
    conn.Write(msg);
  };
  Model* model = ready() ? FindModel(request.model()) : nullptr;
  if (!ready()) return reject(absl::UnavailableError("worker is still loading its models"));
  if (model == nullptr) {
    return reject(absl::NotFoundError(absl::StrCat("model \"", request.model(),
                                                   "\" is not loaded on this worker")));
  }
  absl::MutexLock lock(&mu_);
  int busy = 0;
  for (const auto& [rid, r] : running_) busy += r->finished ? 0 : 1;
  if (busy >= options_.max_concurrent || running_.count(id)) {
    return reject(absl::ResourceExhaustedError("worker at capacity"));
  }
  auto& slot = running_[id];
  slot = std::make_unique<RunningRollout>();
  RunningRollout* r = slot.get();
  if (metrics_) metrics_->rollouts_running.Increment();
  r->thread = std::thread([this, &conn, r, id, model, request = std::move(request)] {
    WM_LOG(kInfo, "rollout_state") << Kv("rollout", id) << Kv("state", "RUNNING")
                                   << Kv("frames", request.num_frames());
    InitTorchThread();
    StreamSink sink([&conn](const v1::WorkerMessage& m) { return conn.Write(m); }, id);
    const absl::Time start = absl::Now();
    RolloutRunnerOptions runner_options;
    runner_options.metrics = metrics_;
    runner_options.memory = memory_;
    v1::RolloutDone done = RunRollout(*model, id, request, r->cancelled, sink, runner_options);
    const char* outcome = done.status_code() == 0 ? "succeeded"
                          : done.status_code() == static_cast<int>(absl::StatusCode::kCancelled)
                              ? "cancelled"
                              : "failed";
    WM_LOG(kInfo, "rollout_state") << Kv("rollout", id) << Kv("state", outcome)
                                   << Kv("seconds", absl::ToDoubleSeconds(absl::Now() - start))
                                   << Kv("status", done.status_message());
    if (metrics_) {
      metrics_->RolloutEnded(outcome);
      metrics_->rollouts_running.Decrement();
      if (done.status_code() == static_cast<int>(absl::StatusCode::kResourceExhausted)) {
        metrics_->oom_events.Increment();
      }
    }
    {
      // Free the slot before reporting: the scheduler may assign the next rollout the moment
      // it reads RolloutDone.
      absl::MutexLock lock(&mu_);
      r->finished = true;
    }
    v1::WorkerMessage msg;
    *msg.mutable_done() = std::move(done);
    conn.Write(msg);
  });
}

}  // namespace wmserve::worker
