// Validates rendered manifests (kubectl kustomize output) against the Kubernetes, KEDA and
// prometheus-operator schemas, and parses the Grafana dashboard each one carries.
//   node validate.mjs NAME=RENDERED.yaml...
// Prints the objects per kind for each; exits 1 on the first file with an invalid object.
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

// Which npm package models each API group (the core group has none).
const packageForGroup = {
  'keda.sh': '@kubernetes-models/keda',
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator',
};

async function modelFor(apiVersion, kind) {
  const group = apiVersion.includes('/') ? apiVersion.split('/')[0] : '';
  const pkg = packageForGroup[group] ?? 'kubernetes-models';
  const module = await import(`${pkg}/${apiVersion}`).catch(() => ({}));
  if (!module[kind]) throw new Error(`no schema for ${apiVersion} ${kind} in ${pkg}`);
  return module[kind];
}

function checkDashboard(name, text) {
  const dashboard = JSON.parse(text);
  if (!Array.isArray(dashboard.panels) || dashboard.panels.length === 0) throw new Error(`${name}: no panels`);
  const ids = new Set();
  for (const panel of dashboard.panels) {
    if (ids.has(panel.id)) throw new Error(`${name}: panel id ${panel.id} twice`);
    ids.add(panel.id);
    if (!panel.title || !panel.gridPos) throw new Error(`${name}: panel ${panel.id} lacks a title or gridPos`);
    if (!panel.targets?.length || panel.targets.some((t) => !t.expr)) {
      throw new Error(`${name}: panel "${panel.title}" has a target without a query`);
    }
  }
  return dashboard.panels.length;
}

let failed = false;
for (const argument of process.argv.slice(2)) {
  const [overlay, file] = argument.split('=');
  const counts = {};
  try {
    const documents = parseAllDocuments(readFileSync(file, 'utf8'));
    for (const document of documents) {
      if (document.errors.length) throw new Error(`YAML: ${document.errors[0].message}`);
      const object = document.toJS();
      if (object === null) continue;
      const where = `${object.kind} ${object.metadata?.name}`;
      const Model = await modelFor(object.apiVersion, object.kind);
      try {
        new Model(object).validate();
      } catch (error) {
        throw new Error(`${where}: ${error.message}`);
      }
      if (object.kind === 'ConfigMap' && object.metadata.labels?.grafana_dashboard) {
        for (const [key, text] of Object.entries(object.data)) {
          console.log(`${overlay}: ${where}/${key}: ${checkDashboard(key, text)} panels`);
        }
      }
      counts[object.kind] = (counts[object.kind] ?? 0) + 1;
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const list = Object.entries(counts).sort().map(([kind, n]) => `${kind} ${n}`).join(', ');
    console.log(`${overlay}: ${total} objects valid (${list})`);
  } catch (error) {
    console.error(`${overlay} (${file}): ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
