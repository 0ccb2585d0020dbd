// TLS, mutual TLS and bearer tokens: the right client is served, the wrong one refused.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "server/anoclip_server.h"
#include "test_util.h"

namespace anoclip::server {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A CA, a server certificate for localhost/127.0.0.1 and two client certificates (one from
// another CA), made with the openssl CLI.
class Certificates {
 public:
  Certificates() : dir_(::testing::TempDir() + "/certs") {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const std::string script =
        "cd " + dir_ + " && exec >openssl.log 2>&1 && set -e\n"
        "ca() { openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=$1 -keyout $1.key -out $1.pem; }\n"
        "leaf() { openssl req -newkey rsa:2048 -nodes -subj /CN=$2 -keyout $2.key -out $2.csr;\n"
        "  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > $2.ext;\n"
        "  openssl x509 -req -in $2.csr -CA $1.pem -CAkey $1.key -CAcreateserial -days 1 -extfile $2.ext -out $2.pem; }\n"
        "ca ca; ca other_ca; leaf ca server; leaf ca client; leaf other_ca stranger\n";
    ok_ = std::system(script.c_str()) == 0;
  }
  bool ok() const { return ok_; }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string Pem(const std::string& name) const { return ReadFile(Path(name)); }

 private:
  std::string dir_;
  bool ok_ = false;
};

ServerConfig Config() {
  ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics_listen = "";
  config.model_dir = ::anoclip::testing::TinyModelDir();
  config.vocab = ::anoclip::testing::VocabPath();
  config.threads = 1;
  config.drain_timeout_s = 5;
  return config;
}

grpc::Status Info(const std::shared_ptr<grpc::ChannelCredentials>& credentials, int port,
                  const std::string& token = "", const std::string& scheme = "Bearer ") {
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), credentials, args);
  auto stub = anoclip::v1::AnomalyDetectionService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", scheme + token);
  anoclip::v1::GetModelInfoResponse response;
  return stub->GetModelInfo(&context, {}, &response);
}

TEST(SecurityTest, TlsAndMutualTls) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << ReadFile(certs.Path("openssl.log"));
  auto config = Config();
  config.tls_cert = certs.Path("server.pem");
  config.tls_key = certs.Path("server.key");
  {
    auto server = AnoclipServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    grpc::SslCredentialsOptions trusted{certs.Pem("ca.pem"), "", ""};
    EXPECT_TRUE(Info(grpc::SslCredentials(trusted), (*server)->grpc_port()).ok());
    grpc::SslCredentialsOptions untrusted{certs.Pem("other_ca.pem"), "", ""};
    EXPECT_FALSE(Info(grpc::SslCredentials(untrusted), (*server)->grpc_port()).ok());
    EXPECT_FALSE(Info(grpc::InsecureChannelCredentials(), (*server)->grpc_port()).ok());
  }
  config.tls_client_ca = certs.Path("ca.pem");
  auto server = AnoclipServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::SslCredentialsOptions client{certs.Pem("ca.pem"), certs.Pem("client.key"), certs.Pem("client.pem")};
  EXPECT_TRUE(Info(grpc::SslCredentials(client), (*server)->grpc_port()).ok());
  grpc::SslCredentialsOptions stranger{certs.Pem("ca.pem"), certs.Pem("stranger.key"), certs.Pem("stranger.pem")};
  EXPECT_FALSE(Info(grpc::SslCredentials(stranger), (*server)->grpc_port()).ok());
  grpc::SslCredentialsOptions anonymous{certs.Pem("ca.pem"), "", ""};
  EXPECT_FALSE(Info(grpc::SslCredentials(anonymous), (*server)->grpc_port()).ok());
}

TEST(SecurityTest, BearerToken) {
  const std::string token_file = ::testing::TempDir() + "/token";
  std::ofstream(token_file) << "s3cret-token\n";
  auto config = Config();
  config.auth_token_file = token_file;
  auto server = AnoclipServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->grpc_port();
  EXPECT_TRUE(Info(grpc::InsecureChannelCredentials(), port, "s3cret-token").ok());
  EXPECT_EQ(Info(grpc::InsecureChannelCredentials(), port, "s3cret-tokeX").error_code(), grpc::UNAUTHENTICATED);
  EXPECT_EQ(Info(grpc::InsecureChannelCredentials(), port, "s3cret").error_code(), grpc::UNAUTHENTICATED);
  EXPECT_EQ(Info(grpc::InsecureChannelCredentials(), port).error_code(), grpc::UNAUTHENTICATED);
  // The scheme is case-insensitive (RFC 7235); the token is not.
  EXPECT_TRUE(Info(grpc::InsecureChannelCredentials(), port, "s3cret-token", "bearer ").ok());
  EXPECT_TRUE(Info(grpc::InsecureChannelCredentials(), port, "s3cret-token", "BEARER ").ok());
  EXPECT_EQ(Info(grpc::InsecureChannelCredentials(), port, "S3CRET-TOKEN").error_code(), grpc::UNAUTHENTICATED);
  EXPECT_EQ(Info(grpc::InsecureChannelCredentials(), port, "s3cret-token", "Basic ").error_code(),
            grpc::UNAUTHENTICATED);
}

TEST(SecurityTest, AKeyThatDoesNotMatchTheCertificateIsNamedAtStartUp) {
  Certificates certs;
  ASSERT_TRUE(certs.ok()) << ReadFile(certs.Path("openssl.log"));
  auto config = Config();
  config.tls_cert = certs.Path("server.pem");
  config.tls_key = certs.Path("client.key");
  auto server = AnoclipServer::Start(config);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("does not match the certificate"), std::string::npos) << server.status();
  config.tls_key = certs.Path("openssl.log");
  server = AnoclipServer::Start(config);
  EXPECT_NE(server.status().message().find("holds no PEM private key"), std::string::npos) << server.status();
}

}  // namespace
}  // namespace anoclip::server
