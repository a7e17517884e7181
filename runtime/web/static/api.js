// The worker's HTTP side: health, the playground config, and the local /v1 API.

/** The worker could not be reached at all (not running, wrong port, network down). */
export class Unreachable extends Error {}

/** The API answered with an error body ({"error": ...}). */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function request(url, options = {}, timeoutMs = 8000) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    return await fetch(url, { ...options, signal: controller.signal, cache: "no-store" });
  } catch (err) {
    throw new Unreachable(err && err.name === "AbortError" ? "timed out" : String(err && err.message));
  } finally {
    clearTimeout(timer);
  }
}

async function json(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { error: text.slice(0, 200) };
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function loadConfig() {
  if (window.RYMI_CONFIG) return window.RYMI_CONFIG;
  return json(await request("/playground/config.json"));
}

export async function health() {
  const response = await request("/healthz", {}, 3000);
  return response.ok;
}

export class Api {
  constructor(base, key) {
    this.base = base || "";
    this.key = key;
  }

  async call(method, path, body) {
    const headers = { Authorization: `Bearer ${this.key}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await request(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return json(response);
  }

  /** Every agent, following limit/offset pagination. */
  async agents() {
    const all = [];
    for (let offset = 0; ; ) {
      const page = await this.call("GET", `/v1/agents?limit=200&offset=${offset}`);
      const items = page.agents || page.data || [];
      all.push(...items);
      offset += items.length;
      if (!items.length || page.total === undefined || offset >= page.total) break;
    }
    return all;
  }

  agent(id) {
    return this.call("GET", `/v1/agents/${encodeURIComponent(id)}`);
  }

  updateAgent(id, changes) {
    return this.call("PUT", `/v1/agents/${encodeURIComponent(id)}`, changes);
  }
}
