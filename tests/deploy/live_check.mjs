// Checks the manifests against a running anoclip-server: every metric name that the alerts, the
// HPA, the prometheus-adapter rule, the KEDA trigger and the dashboard use is exported on
// /metrics; every flag the Deployments pass is one `anoclip-server --help` lists; the server
// starts with the Deployment's own arguments and ConfigMap (listeners moved to loopback port 0,
// files to a scratch folder); probe ports, the probed service name and the drain timing agree.
//   node live_check.mjs BIN_DIR REFERENCE_DIR PROTO ADAPTER_RULES RENDERED.yaml...
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';

const [binDir, referenceDir, protoFile, adapterRules, ...renders] = process.argv.slice(2);
const problems = [];
const check = (ok, message) => { if (!ok) problems.push(message); };

const objects = renders.flatMap((file) =>
  parseAllDocuments(readFileSync(file, 'utf8')).map((d) => d.toJS()).filter(Boolean).map((o) => ({ ...o, file })));
const ofKind = (kind) => objects.filter((o) => o.kind === kind);

// --- metric names the manifests use -------------------------------------------------------
const used = new Map();  // name -> where
const collect = (text, where) => {
  for (const name of String(text).match(/\banoclip_[a-z0-9_]+/g) ?? []) used.set(name, where);
};
for (const rule of ofKind('PrometheusRule')) {
  for (const group of rule.spec.groups) for (const r of group.rules) collect(r.expr, `alert ${r.alert ?? r.record}`);
}
for (const hpa of ofKind('HorizontalPodAutoscaler')) {
  for (const m of hpa.spec.metrics) if (m.pods) collect(m.pods.metric.name, `HPA ${hpa.file}`);
}
for (const scaled of ofKind('ScaledObject')) {
  for (const trigger of scaled.spec.triggers) collect(trigger.metadata.query, 'KEDA trigger');
}
const adapter = parse(readFileSync(adapterRules, 'utf8'));
const adapterNames = new Set();
for (const rule of adapter.rules) {
  collect(rule.seriesQuery, 'adapter seriesQuery');
  collect(rule.metricsQuery, 'adapter metricsQuery');
  adapterNames.add(rule.name.as);
}
for (const hpa of ofKind('HorizontalPodAutoscaler')) {
  for (const m of hpa.spec.metrics) {
    if (m.pods) check(adapterNames.has(m.pods.metric.name), `HPA metric ${m.pods.metric.name} is served by no adapter rule`);
  }
}
for (const map of ofKind('ConfigMap').filter((m) => m.metadata.labels?.grafana_dashboard)) {
  for (const text of Object.values(map.data)) {
    for (const panel of JSON.parse(text).panels) for (const t of panel.targets) collect(t.expr, `panel "${panel.title}"`);
  }
}
// Method names in selectors are the service's RPCs.
const proto = readFileSync(protoFile, 'utf8');
const rpcs = new Set([...proto.matchAll(/rpc\s+(\w+)\s*\(/g)].map((m) => m[1]));
for (const rule of ofKind('PrometheusRule')) {
  for (const group of rule.spec.groups) {
    for (const r of group.rules) {
      for (const m of r.expr.matchAll(/method="(\w+)"/g)) check(rpcs.has(m[1]), `alert ${r.alert}: no RPC ${m[1]}`);
    }
  }
}

// --- flags, ports, probes, drain timing ----------------------------------------------------
const help = spawnSync(join(binDir, 'anoclip-server'), ['--help'], { encoding: 'utf8' });
check(help.status === 0, 'anoclip-server --help failed');
const knownFlags = new Set(help.stdout.match(/--[a-z][a-z0-9-]*/g));
const serviceName = `${proto.match(/package\s+([\w.]+);/)[1]}.${proto.match(/service\s+(\w+)/)[1]}`;
const portOf = (address) => Number(address.slice(address.lastIndexOf(':') + 1));
const flagValue = (args, flag) => args.find((a) => a.startsWith(`--${flag}=`))?.slice(flag.length + 3);
const configMaps = Object.fromEntries(ofKind('ConfigMap').map((m) => [m.metadata.name, m]));

for (const deployment of ofKind('Deployment')) {
  const where = `${deployment.file}: Deployment ${deployment.metadata.name}`;
  const pod = deployment.spec.template.spec;
  const container = pod.containers[0];
  for (const arg of container.args) {
    check(arg.startsWith('--') && arg.includes('='), `${where}: argument ${arg} is not --flag=value`);
    check(knownFlags.has(arg.split('=')[0]), `${where}: anoclip-server has no flag ${arg.split('=')[0]}`);
  }
  const ports = Object.fromEntries(container.ports.map((p) => [p.name, p.containerPort]));
  check(portOf(flagValue(container.args, 'listen')) === ports.grpc, `${where}: --listen is not the grpc port`);
  check(portOf(flagValue(container.args, 'metrics-listen')) === ports.metrics, `${where}: --metrics-listen is not the metrics port`);
  for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const probe = container[kind];
    check(probe, `${where}: no ${kind}`);
    if (probe?.grpc) {
      check(probe.grpc.port === ports.grpc, `${where}: ${kind} probes port ${probe.grpc.port}, not the grpc port`);
      if (probe.grpc.service) check(probe.grpc.service === serviceName, `${where}: ${kind} probes service ${probe.grpc.service}`);
    } else if (probe?.exec) {
      const [program, subcommand] = probe.exec.command;
      check(program === 'anoclip-client' && subcommand === 'health', `${where}: ${kind} runs ${probe.exec.command.join(' ')}`);
      const target = probe.exec.command.find((a) => a.startsWith('--target='));
      check(target && portOf(target) === ports.grpc, `${where}: ${kind} checks another port`);
    }
  }
  // preStop + drain must fit in the grace period, or the kubelet kills calls being finished.
  const configName = pod.volumes.find((v) => v.name === 'config').configMap.name;
  const config = JSON.parse(configMaps[configName].data['server-config.json']);
  const preStop = Number(container.lifecycle.preStop.exec.command[1]);
  check(pod.terminationGracePeriodSeconds >= preStop + config.drain_timeout_s,
    `${where}: terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} < preStop ${preStop} + drain ${config.drain_timeout_s}`);
  for (const key of Object.keys(config)) {
    check(knownFlags.has(`--${key.replaceAll('_', '-')}`), `${where}: server-config.json setting ${key} is no flag`);
  }
}
for (const service of ofKind('Service')) {
  const deployment = ofKind('Deployment').find((d) => d.file === service.file);
  const names = deployment.spec.template.spec.containers[0].ports.map((p) => p.name);
  for (const port of service.spec.ports) {
    check(names.includes(port.targetPort), `Service ${service.metadata.name}: targetPort ${port.targetPort} is no container port`);
  }
}
for (const monitor of ofKind('ServiceMonitor')) {
  const selector = monitor.spec.selector.matchLabels;
  const services = ofKind('Service').filter((s) => s.file === monitor.file &&
    Object.entries(selector).every(([k, v]) => s.metadata.labels?.[k] === v));
  check(services.length === 1, `${monitor.file}: ServiceMonitor selects ${services.length} Services, not 1`);
  for (const endpoint of monitor.spec.endpoints) {
    check(services[0]?.spec.ports.some((p) => p.name === endpoint.port), `ServiceMonitor port ${endpoint.port} is on no Service`);
  }
}

// --- a live server with the first Deployment's arguments -----------------------------------
const run = (args, options = {}) => spawnSync(join(binDir, 'anoclip-client'), args, { encoding: 'utf8', timeout: 60000, ...options });
const scratch = mkdtempSync(join(tmpdir(), 'anoclip-live-check-'));
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));
const deployment = ofKind('Deployment')[0];
const container = deployment.spec.template.spec.containers[0];
const configName = deployment.spec.template.spec.volumes.find((v) => v.name === 'config').configMap.name;
const config = JSON.parse(configMaps[configName].data['server-config.json']);
writeFileSync(join(scratch, 'server-config.json'), JSON.stringify({
  ...config, model: join(referenceDir, 'tiny-vit/model'), cache_dir: join(scratch, 'cache') }));
writeFileSync(join(scratch, 'token'), 'live-check-token\n');
const replaced = { config: join(scratch, 'server-config.json'), listen: '127.0.0.1:0', 'metrics-listen': '127.0.0.1:0',
                   'auth-token-file': join(scratch, 'token') };
const serverArgs = container.args.map((arg) => {
  const flag = arg.slice(2).split('=')[0];
  return flag in replaced ? `--${flag}=${replaced[flag]}` : arg;
});
serverArgs.push(`--vocab=${join(referenceDir, 'bpe_simple_vocab_16e6.txt.gz')}`, '--threads=1',
                `--ready-file=${join(scratch, 'ready.json')}`);
const server = spawn(join(binDir, 'anoclip-server'), serverArgs, { stdio: ['ignore', 'inherit', 'inherit'] });
let exited = null;
server.on('exit', (code) => { exited = code; });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
for (let i = 0; i < 1200 && !existsSync(join(scratch, 'ready.json')) && exited === null; ++i) await sleep(100);
if (!existsSync(join(scratch, 'ready.json'))) {
  server.kill('SIGKILL');
  console.error(`anoclip-server did not start with the Deployment's arguments: ${serverArgs.join(' ')}`);
  process.exit(1);
}
const ready = JSON.parse(readFileSync(join(scratch, 'ready.json'), 'utf8'));
const target = `--target=127.0.0.1:${ready.grpc_port}`;
// The kubelet's probes carry no token: health must answer without one.
for (const service of [[], [`--service=${serviceName}`]]) {
  const health = run(['health', target, ...service]);
  check(health.stdout.trim() === 'SERVING', `health ${service.join(' ')} without a token: ${health.stdout}${health.stderr}`);
}
// Traffic, so the labelled series (requests by method and code, scores by class) exist.
const token = `--token-file=${join(scratch, 'token')}`;
run(['make-samples', `--out=${join(scratch, 'samples')}`, '--size=64']);
const detect = run(['detect', join(scratch, 'samples/defect_scratch.png'), '--class=bottle', '--threshold=0.5', target, token]);
check(detect.status === 0, `detect failed: ${detect.stderr}`);
const prepare = run(['prepare', '--class=screw', target, token]);
check(prepare.status === 0, `prepare failed: ${prepare.stderr}`);
const metrics = await (await fetch(`http://127.0.0.1:${ready.metrics_port}/metrics`)).text();
const exported = new Set(metrics.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0]));
for (const [name, where] of used) check(exported.has(name), `${where} uses ${name}, which /metrics does not export`);

server.kill('SIGTERM');
for (let i = 0; i < 300 && exited === null; ++i) await sleep(100);
check(exited === 0, `anoclip-server exited ${exited} after SIGTERM`);
if (exited === null) server.kill('SIGKILL');

console.log(`metric names used by alerts, HPA, adapter, KEDA and dashboard (${used.size}):`);
console.log(`  ${[...used.keys()].sort().join(' ')}`);
console.log(`flags checked against --help: ${[...new Set(ofKind('Deployment').flatMap((d) => d.spec.template.spec.containers[0].args.map((a) => a.split('=')[0])))].join(' ')}`);
if (problems.length) {
  for (const p of problems) console.error(`PROBLEM: ${p}`);
  process.exit(1);
}
console.log(`live check passed on ${renders.length} rendered overlays`);
