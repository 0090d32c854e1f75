// The dashboard socket (/ws/dashboard): authenticates with the first frame (a token in the
// URL would end up in proxy logs), hands events to whichever page listens, and reconnects
// with jittered exponential backoff so a restarted server is not hit by every browser at once.

const MIN_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

export class DashboardSocket {
  /**
   * @param {() => string|null} token the current user token
   * @param {(state: {state: string, retryInMs?: number}) => void} onState connection changes
   * @param {() => void} onAuthFailed the server refused the token
   */
  constructor(token, onState, onAuthFailed) {
    this.token = token;
    this.onState = onState;
    this.onAuthFailed = onAuthFailed;
    this.listeners = new Set();
    this.ws = null;
    this.delay = MIN_DELAY_MS;
    this.timer = null;
    this.stopped = true;
    this.state = 'closed';
  }

  /** `fn(event)` for every frame; answers the function that stops listening. */
  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'logged out');
    this.ws = null;
    this.setState('closed');
  }

  setState(state, retryInMs) {
    this.state = state;
    this.onState({ state, retryInMs });
  }

  connect() {
    const token = this.token();
    if (this.stopped || !token) return;
    this.setState('connecting');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws/dashboard`);
    this.ws = ws;
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token })));
    ws.addEventListener('message', (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (frame.type === 'hello') {
        this.delay = MIN_DELAY_MS;
        this.setState('live');
      }
      for (const fn of this.listeners) {
        try {
          fn(frame);
        } catch (e) {
          console.error('dashboard listener failed', e);
        }
      }
    });
    ws.addEventListener('close', (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      // 4401: the token was refused; 4001: it was revoked (logout elsewhere, the account
      // disabled, deleted or changed). Reconnecting with it would only be refused again.
      if (e.code === 4401 || e.code === 4001) {
        this.setState('closed');
        this.onAuthFailed();
        return;
      }
      const wait = Math.round(this.delay * (0.5 + Math.random() * 0.5));
      this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
      this.setState('connecting', wait);
      this.timer = setTimeout(() => this.connect(), wait);
    });
  }
}
