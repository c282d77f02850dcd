#include "server/scheduler_server.h"

#include <atomic>
#include <cstdio>
#include <deque>
#include <fstream>
#include <list>
#include <map>
#include <set>
#include <random>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "scheduler/queue_policy.h"
#include "scheduler/worker_registry.h"
#include "server/logging.h"
#include "server/status_util.h"
#include "worker/media/image_io.h"

namespace wmserve::server {

using log::Kv;

namespace {

absl::Time FromChrono(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(t);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Rollout RPC reactor: one per client stream.
// ---------------------------------------------------------------------------------------------

// One client stream of a rollout: a Rollout call (new rollout, or a resubmission joining one)
// or an Attach call. Writes the hub's events in order, one StartWrite in flight.
class RolloutReactor : public grpc::ServerWriteReactor<v1::RolloutEvent>, public ClientStream {
 public:
  // Rollout RPC.
  RolloutReactor(RolloutHub* hub, const SchedulerOptions& options,
                 const v1::RolloutRequest* request, absl::Time deadline)
      : hub_(hub) {
    absl::Status valid = ValidateRolloutRequest(*request, options.limits);
    if (valid.ok()) valid = media::DecodeImage(request->image()).status();
    if (!valid.ok()) {
      hub_->CountInvalidRequest();
      WM_LOG(kInfo, "rollout_rejected") << Kv("reason", "invalid_argument")
                                        << Kv("status", valid.ToString());
      Finish(ToGrpcStatus(valid));
      return;
    }
    // The rollout id is known before the hub can call back (it sends Accepted from Submit).
    absl::StatusOr<std::string> id = hub_->Submit(*request, deadline, this);
    Bind(id.status(), id.ok() ? *id : "");
  }

  // Attach RPC.
  RolloutReactor(RolloutHub* hub, const v1::AttachRequest* request) : hub_(hub) {
    Bind(hub_->Attach(request->rollout_id(), request->from_chunk(), this), request->rollout_id());
  }

  size_t Send(v1::RolloutEvent event) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_ || cancelled_ || close_requested_) return 0;
    AdjustBacklogLocked(static_cast<int64_t>(event.ByteSizeLong()));
    pending_.push_back(std::move(event));
    MaybeWriteLocked();
    return backlog_bytes_;
  }

  void Close(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finish_status_ = status;
    close_requested_ = true;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The client is gone; OnCancel follows and ends the rollout.
      pending_.clear();
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    } else {
      AdjustBacklogLocked(-static_cast<int64_t>(std::min(backlog_bytes_, in_flight_bytes_)));
      pending_.pop_front();
    }
    in_flight_bytes_ = 0;
    MaybeWriteLocked();
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      id = rollout_id_;
    }
    if (!id.empty()) hub_->ClientGone(id, this);
    // If the hub had already closed us, Close() will not come again: finish here.
    absl::MutexLock lock(&mu_);
    if (!finishing_ && (close_requested_ || id.empty())) {
      // Unwritten events are dropped by MaybeWriteLocked once no write is in flight.
      if (!close_requested_) finish_status_ = grpc::Status::CANCELLED;
      close_requested_ = true;
      MaybeWriteLocked();
    }
  }

  void OnDone() override {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      id = rollout_id_;
    }
    if (!id.empty()) hub_->DetachClient(id, this);
    {
      absl::MutexLock lock(&mu_);
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    }
    delete this;
  }

 private:
  void Bind(const absl::Status& status, const std::string& id) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    absl::MutexLock lock(&mu_);
    rollout_id_ = id;
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_) return;
    // Never clear while a write is in flight: StartWrite holds a pointer to pending_.front().
    if (cancelled_ && !pending_.empty()) {
      pending_.clear();
      AdjustBacklogLocked(-static_cast<int64_t>(backlog_bytes_));
    }
    if (!pending_.empty()) {
      writing_ = true;
      in_flight_bytes_ = pending_.front().ByteSizeLong();
      StartWrite(&pending_.front());
      return;
    }
    if (close_requested_) {
      finishing_ = true;
      Finish(finish_status_);
    }
  }

  void AdjustBacklogLocked(int64_t delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    backlog_bytes_ = static_cast<size_t>(static_cast<int64_t>(backlog_bytes_) + delta);
    hub_->send_queue_bytes().fetch_add(delta);
  }

  RolloutHub* const hub_;
  absl::Mutex mu_;
  std::string rollout_id_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::RolloutEvent> pending_ ABSL_GUARDED_BY(mu_);  // front() is being written
  size_t backlog_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool close_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------------------------
// Worker Connect reactor: one per worker stream.
// ---------------------------------------------------------------------------------------------

class WorkerReactor : public grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>,
                      public WorkerLink {
 public:
  WorkerReactor(RolloutHub* hub, std::string peer) : hub_(hub), peer_(std::move(peer)) {
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Gone("stream closed");
      return;
    }
    if (worker_id_.empty()) {
      if (!incoming_.has_register_()) {
        Close(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                           "first message on WorkerGateway.Connect must be Register"));
        return;
      }
      // RegisterWorker sends Registered through this link before returning.
      absl::StatusOr<std::string> id = hub_->RegisterWorker(incoming_.register_(), this);
      if (!id.ok()) {
        Close(ToGrpcStatus(id.status()));
        return;
      }
      worker_id_ = *id;
    } else {
      switch (incoming_.msg_case()) {
        case v1::WorkerMessage::kHeartbeat:
          hub_->WorkerHeartbeat(worker_id_, incoming_.heartbeat());
          break;
        case v1::WorkerMessage::kUpdate:
          hub_->WorkerUpdate(worker_id_, std::move(*incoming_.mutable_update()));
          break;
        case v1::WorkerMessage::kDone:
          hub_->WorkerDone(worker_id_, incoming_.done());
          break;
        default:
          break;
      }
    }
    incoming_.Clear();
    StartRead(&incoming_);
  }

  void Send(v1::SchedulerMessage message) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    pending_.push_back(std::move(message));
    MaybeWriteLocked();
  }

  void Close(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    Finish(status);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      pending_.clear();
      return;
    }
    pending_.pop_front();
    MaybeWriteLocked();
  }

  void OnDone() override {
    if (!worker_id_.empty()) hub_->WorkerGone(worker_id_, this, "stream closed");
    delete this;
  }

 private:
  void Gone(const std::string& reason) {
    if (!worker_id_.empty()) hub_->WorkerGone(worker_id_, this, reason);
    Close(grpc::Status::OK);
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_ || pending_.empty()) return;
    writing_ = true;
    StartWrite(&pending_.front());
  }

  RolloutHub* const hub_;
  const std::string peer_;
  v1::WorkerMessage incoming_;  // only touched by the read chain
  std::string worker_id_;       // set by the first read; read chain and OnDone only
  absl::Mutex mu_;
  std::deque<v1::SchedulerMessage> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------------

namespace {

class RolloutServiceImpl : public v1::RolloutService::CallbackService {
 public:
  RolloutServiceImpl(RolloutHub* hub, const SchedulerOptions& options)
      : hub_(hub), options_(options) {}

  grpc::ServerWriteReactor<v1::RolloutEvent>* Rollout(grpc::CallbackServerContext* ctx,
                                                      const v1::RolloutRequest* request) override {
    // The hub ends a rollout a little before the call's own deadline so that it, not the
    // transport, decides the outcome: the worker is told and the status is recorded.
    absl::Time deadline = FromChrono(ctx->deadline());
    if (deadline != absl::InfiniteFuture()) deadline -= absl::Milliseconds(250);
    return new RolloutReactor(hub_, options_, request, deadline);
  }

  grpc::ServerWriteReactor<v1::RolloutEvent>* Attach(grpc::CallbackServerContext*,
                                                     const v1::AttachRequest* request) override {
    return new RolloutReactor(hub_, request);
  }

  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::CancelRequest* req,
                                   v1::CancelResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto state = hub_->Cancel(req->rollout_id());
    if (state.ok()) resp->set_state(*state);
    reactor->Finish(ToGrpcStatus(state.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetRollout(grpc::CallbackServerContext* ctx,
                                       const v1::GetRolloutRequest* req,
                                       v1::RolloutStatus* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto status = hub_->Get(req->rollout_id());
    if (status.ok()) *resp = *std::move(status);
    reactor->Finish(ToGrpcStatus(status.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const v1::ListWorkersRequest*,
                                        v1::ListWorkersResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    *resp = hub_->ListWorkers();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  RolloutHub* const hub_;
  const SchedulerOptions options_;
};

class WorkerGatewayImpl : public v1::WorkerGateway::CallbackService {
 public:
  explicit WorkerGatewayImpl(RolloutHub* hub) : hub_(hub) {}
  grpc::ServerBidiReactor<v1::WorkerMessage, v1::SchedulerMessage>* Connect(
      grpc::CallbackServerContext* ctx) override {
    return new WorkerReactor(hub_, ctx->peer());
  }

 private:
  RolloutHub* const hub_;
};

}  // namespace

SchedulerServer::SchedulerServer(const SchedulerOptions& options,
                                 metrics::SchedulerMetrics* metrics)
    : hub_(std::make_unique<RolloutHub>(options, metrics)),
      rollout_service_(std::make_unique<RolloutServiceImpl>(hub_.get(), options)),
      worker_gateway_(std::make_unique<WorkerGatewayImpl>(hub_.get())) {}

SchedulerServer::~SchedulerServer() = default;

grpc::Service* SchedulerServer::rollout_service() { return rollout_service_.get(); }
grpc::Service* SchedulerServer::worker_gateway() { return worker_gateway_.get(); }
void SchedulerServer::Tick() { hub_->Tick(); }
void SchedulerServer::StopAccepting() { hub_->StopAccepting(); }
bool SchedulerServer::WaitIdle(absl::Duration timeout) { return hub_->WaitIdle(timeout); }
void SchedulerServer::AbortAll(const std::string& reason) { hub_->AbortAll(reason); }

}  // namespace wmserve::server
