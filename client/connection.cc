#include "client/connection.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace anoclip::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::set<std::string> ConnectionFlags() {
  return {"target", "ca-cert", "client-cert", "client-key", "server-name", "token", "token-file", "deadline-ms",
          "connect-timeout-ms"};
}

absl::StatusOr<ConnectionOptions> ConnectionFromArguments(const Arguments& args) {
  ConnectionOptions options;
  options.target = args.String("target", options.target);
  options.ca_cert = args.String("ca-cert");
  options.client_cert = args.String("client-cert");
  options.client_key = args.String("client-key");
  options.server_name = args.String("server-name");
  options.token = args.String("token");
  if (args.Has("token-file")) {
    ANOCLIP_ASSIGN_OR_RETURN(auto token, ReadFile(args.String("token-file")));
    options.token = std::string(absl::StripAsciiWhitespace(token));
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t deadline, args.Int("deadline-ms", 30000, 1, 3600000));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t connect, args.Int("connect-timeout-ms", 5000, 1, 600000));
  options.deadline_ms = static_cast<int>(deadline);
  options.connect_timeout_ms = static_cast<int>(connect);
  if (options.client_cert.empty() != options.client_key.empty()) {
    return absl::InvalidArgumentError("--client-cert and --client-key go together");
  }
  if (!options.client_cert.empty() && options.ca_cert.empty()) {
    return absl::InvalidArgumentError("mutual TLS needs --ca-cert too");
  }
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options, int index) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.ca_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(options.ca_cert));
    if (!options.client_cert.empty()) {
      ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(options.client_cert));
      ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(options.client_key));
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt("anoclip.channel_index", index);  // distinct args: separate connections
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

absl::Status WaitConnected(grpc::Channel& channel, const ConnectionOptions& options) {
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  if (!channel.WaitForConnected(deadline)) {
    return absl::UnavailableError(absl::StrCat("cannot reach ", options.target, " within ",
                                               options.connect_timeout_ms, " ms"));
  }
  return absl::OkStatus();
}

void PrepareContext(grpc::ClientContext& context, const ConnectionOptions& options) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options.deadline_ms));
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
}

}  // namespace anoclip::client
