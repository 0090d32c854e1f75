// The REST client: the session (token in sessionStorage, so it ends with the tab), the
// envelope ({success, data} or {success, error: {code, message}}), and uploads with progress.

const SESSION_KEY = 'factory.session';

/** An API refusal, carrying the server's code and message for the user to read. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The logged-in user: {token, username, role, expiresAt}, or null. */
export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

export function saveSession(value) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

let onUnauthorized = () => {};

/** What to do when the server says the token is no longer good (expired, revoked). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** `path` with the non-empty values of `query` as its query string. */
export function withQuery(path, query = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

function errorFrom(status, body, statusText) {
  if (body && body.error && typeof body.error.message === 'string') {
    return new ApiError(status, body.error.code, body.error.message);
  }
  return new ApiError(status, `http_${status}`, statusText || `request failed (${status})`);
}

/** One call; answers `data` or throws an ApiError with the server's message. */
export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  const current = session();
  if (current) headers.Authorization = `Bearer ${current.token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server: ${e.message}`);
  }
  let json = null;
  try {
    json = await response.json();
  } catch {
    // A body that is not JSON (a proxy's error page) leaves only the status to report.
  }
  if (!response.ok || !json || json.success !== true) {
    const error = errorFrom(response.status, json, response.statusText);
    if (response.status === 401 && current) onUnauthorized(error);
    throw error;
  }
  return json.data;
}

export const get = (path, query) => request('GET', withQuery(path, query));
export const post = (path, body = {}) => request('POST', path, body);
export const patch = (path, body) => request('PATCH', path, body);
export const put = (path, body) => request('PUT', path, body);
export const del = (path, body) => request('DELETE', path, body);

/**
 * Sends `file` as the raw body of a POST. XHR rather than fetch, because only XHR reports
 * upload progress: `onProgress(sentBytes, totalBytes)`.
 */
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    const current = session();
    if (current) xhr.setRequestHeader('Authorization', `Bearer ${current.token}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => {
      let json = null;
      try {
        json = JSON.parse(xhr.responseText);
      } catch {
        // Reported by status below.
      }
      if (xhr.status >= 200 && xhr.status < 300 && json && json.success) {
        resolve(json.data);
      } else {
        const error = errorFrom(xhr.status, json, xhr.statusText);
        if (xhr.status === 401 && current) onUnauthorized(error);
        reject(error);
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'the upload was cut off')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'the upload was cancelled')));
    xhr.send(file);
  });
}

/** A GET answered as text in the format `accept` names (CSV); a refusal throws an ApiError. */
export async function fetchText(path, accept) {
  const headers = { Accept: accept };
  const current = session();
  if (current) headers.Authorization = `Bearer ${current.token}`;
  let response;
  try {
    response = await fetch(path, { headers });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server: ${e.message}`);
  }
  if (!response.ok) {
    let json = null;
    try {
      json = await response.json();
    } catch {
      // Reported by status below.
    }
    const error = errorFrom(response.status, json, response.statusText);
    if (response.status === 401 && current) onUnauthorized(error);
    throw error;
  }
  return response.text();
}
