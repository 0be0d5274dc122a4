// The agent's payment desk. Uses only tonewall's public API, with the desk login's cookie
// (HttpOnly: this script never sees it) and the CSRF token it keeps in memory. It never
// receives a card number, expiry, security code, retrieval token or PIN: only masked progress.
'use strict';

const $ = (id) => document.getElementById(id);

const desk = {
  csrf: null,
  agent: null,
  current: null,      // the session followed
  view: null,         // its last view
  es: null,           // its EventSource
  retryTimer: null,
  retryMs: 1000,
  callsTimer: null,
  announced: '',
  dismissed: new Set(), // payments the agent closed: not opened again by themselves
};

const FIELD_NAMES = { pan: 'Card number', expiry: 'Expiry date', cvv: 'Security code', postcode: 'Postcode digits' };
const BRANDS = { visa: 'Visa', mastercard: 'Mastercard', amex: 'Amex', discover: 'Discover', diners: 'Diners', jcb: 'JCB', maestro: 'Maestro', union_pay: 'UnionPay' };

// Errors in words an agent can say to the caller.
function reasonText(reason, field) {
  const name = (FIELD_NAMES[field] || field).toLowerCase();
  switch (reason) {
    case 'too_short': return `Not enough digits for the ${name}. Ask the caller to key it again.`;
    case 'too_long': return `Too many digits for the ${name}. Ask the caller to key it again.`;
    case 'luhn_failed': return 'That card number is not valid, a digit was probably mistyped. Ask the caller to key it again.';
    case 'unknown_brand': return 'This type of card is not accepted. Ask the caller for another card.';
    case 'bad_month': return 'The month must be 01 to 12. Ask the caller to key the expiry as month then year.';
    case 'expired': return 'That card has expired. Ask the caller for another card.';
    case 'timeout': return `The caller stopped before finishing the ${name}. Ask them to key it again.`;
    case 'mismatch': return `The two entries of the ${name} did not match. Ask the caller to key it twice again.`;
    case 'not_digits': return `Only digits can go into the ${name}.`;
    default: return `The ${name} was not accepted. Ask the caller to key it again.`;
  }
}

const STATUS = {
  pending: ['Waiting for the caller', 'wait'],
  bound: ['Call connected', 'wait'],
  capturing: ['Caller is keying', 'live'],
  sealed: ['Sealed', 'ok'],
  unlocked: ['Handed over', 'ok'],
  failed: ['Failed', 'bad'],
  expired: ['Expired', 'bad'],
  cancelled: ['Cancelled', 'bad'],
};

function resultText(v) {
  switch (v.state) {
    case 'sealed': return ['Card details sealed and ready for the payment integration. You can end the payment part of the call.', 'ok'];
    case 'unlocked': return ['Card details handed to the payment integration.', 'ok'];
    case 'expired': return ['The payment expired before the card details were complete. Start a new payment if the caller still wants to pay.', 'bad'];
    case 'cancelled': return ['The payment was cancelled. Nothing was kept.', 'bad'];
    case 'failed':
      switch (v.outcome) {
        case 'call_ended': return ['The call ended before the card details were complete.', 'bad'];
        case 'vault_error': return ['The card details could not be stored safely. Start a new payment.', 'bad'];
        default: return ['The card details could not be taken.', 'bad'];
      }
    default: return null;
  }
}

// Done as far as the agent is concerned (nothing more to steer)…
const ENDED = new Set(['sealed', 'unlocked', 'failed', 'expired', 'cancelled']);
// …and over for good (the server ends the stream): a sealed card is still followed until the
// payment integration takes it.
const TERMINAL = new Set(['unlocked', 'failed', 'expired', 'cancelled']);

// ---- API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && desk.csrf) headers['X-Tonewall-CSRF'] = desk.csrf;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', 'tonewall cannot be reached. Check your connection and try again.');
  }
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    if (resp.status === 401 && path !== '/v1/desk/login' && path !== '/v1/desk/me') loggedOut();
    throw new ApiError(resp.status, err.code || 'error', err.message || `tonewall answered ${resp.status}`);
  }
  return data;
}

function showError(el, e) {
  el.textContent = e ? (e.message || String(e)) : '';
  el.hidden = !e;
}

// ---- Login ----------------------------------------------------------------------------------

function loggedIn(me) {
  desk.csrf = me.csrf;
  desk.agent = me.agent;
  $('who').textContent = `Agent ${me.agent}`;
  $('who').hidden = false;
  $('logout').hidden = false;
  $('login-view').hidden = true;
  $('desk-view').hidden = false;
  refreshCalls();
  refreshRecent();
  clearInterval(desk.callsTimer);
  desk.callsTimer = setInterval(() => { refreshCalls(); if (!desk.current) refreshRecent(); }, 5000);
  $('amount').focus();
}

function loggedOut() {
  stopFollowing();
  clearInterval(desk.callsTimer);
  desk.csrf = null;
  desk.agent = null;
  desk.current = null;
  $('who').hidden = true;
  $('logout').hidden = true;
  $('desk-view').hidden = true;
  $('login-view').hidden = false;
  setConn('idle');
  $('token').value = '';
  $('token').focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  const input = $('token');
  showError($('login-error'), null);
  try {
    const me = await api('POST', '/v1/desk/login', { token: input.value.trim() });
    input.value = '';
    loggedIn(me);
  } catch (e) {
    input.value = '';
    showError($('login-error'), e.status === 401 ? new Error('That token is not recognised.') : e);
    input.focus();
  }
}

async function onLogout() {
  try { await api('POST', '/v1/desk/logout'); } catch (e) { /* the login ends anyway */ }
  loggedOut();
}

// ---- Lists ----------------------------------------------------------------------------------

function item(title, detail, buttonText, onClick, label) {
  const li = document.createElement('li');
  const meta = document.createElement('div');
  meta.className = 'meta';
  const a = document.createElement('span');
  a.textContent = title;
  const b = document.createElement('span');
  b.textContent = detail;
  meta.append(a, b);
  li.append(meta);
  if (buttonText) {
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'btn btn-small';
    btn.textContent = buttonText;
    btn.setAttribute('aria-label', label || buttonText);
    btn.addEventListener('click', onClick);
    li.append(btn);
  }
  return li;
}

function since(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min`;
}

async function refreshCalls() {
  if (!desk.csrf) return;
  let calls = [];
  try { calls = (await api('GET', '/v1/calls')).calls || []; } catch (e) { return; }
  const canBind = desk.view && desk.view.state === 'pending';
  for (const [listId, bind] of [['calls', false], ['bind-calls', true]]) {
    const ul = $(listId);
    ul.replaceChildren(...calls.map((c) => item(
      `Caller ${c.from || 'unknown'}`,
      `${c.mode === 'loop' ? 'Secure line' : 'Call'} · ${since(c.started_at)}${c.scrubbing ? ' · keypad protected' : ''}`,
      bind && canBind ? 'Take payment on this call' : null,
      () => bindCall(c.call_id),
      `Take the payment on the call from ${c.from || 'unknown'}`,
    )));
  }
  $('calls-empty').hidden = calls.length > 0;
  $('bind-box').hidden = !(canBind && calls.length > 0);
}

// The agent's own payments. With nothing open, the newest one still in progress opens by
// itself (after a reload, or when the agent's desktop started it elsewhere).
async function refreshRecent() {
  if (!desk.csrf) return;
  let sessions = [];
  try { sessions = (await api('GET', '/v1/sessions')).sessions || []; } catch (e) { return; }
  if (!desk.current) {
    const open = sessions.find((s) => !ENDED.has(s.state) && !desk.dismissed.has(s.id));
    if (open) follow(open.id, false);
  }
  $('recent').replaceChildren(...sessions.slice(0, 8).map((s) => item(
    `${s.amount || 'Payment'}${s.reference ? ' · ' + s.reference : ''}`,
    (STATUS[s.state] || [s.state])[0],
    desk.current === s.id ? null : 'Open',
    () => follow(s.id, true),
    `Open the payment ${s.amount || ''} ${s.reference || ''}`,
  )));
  $('recent-empty').hidden = sessions.length > 0;
}

// ---- A payment --------------------------------------------------------------------------------

async function onStart(ev) {
  ev.preventDefault();
  showError($('new-error'), null);
  const amount = $('amount').value.trim().replace(',', '.');
  if (!/^[0-9]+(\.[0-9]{1,2})?$/.test(amount)) {
    showError($('new-error'), new Error('Enter the amount as digits, for example 42.50.'));
    $('amount').focus();
    return;
  }
  const fields = ['pan'];
  if ($('f-expiry').checked) fields.push('expiry');
  if ($('f-cvv').checked) fields.push('cvv');
  if ($('f-postcode').checked) fields.push('postcode');
  const body = {
    amount: `${$('currency').value} ${Number(amount).toFixed(2)}`,
    reference: $('reference').value.trim() || undefined,
    fields,
    confirm: $('f-confirm').checked && $('f-cvv').checked ? ['cvv'] : [],
  };
  try {
    const created = await api('POST', '/v1/sessions', body);
    $('new-form').reset();
    await follow(created.id, true);
    refreshRecent();
  } catch (e) {
    showError($('new-error'), e);
  }
}

function stopFollowing() {
  if (desk.es) { desk.es.close(); desk.es = null; }
  clearTimeout(desk.retryTimer);
  desk.retryTimer = null;
}

async function follow(id, focus) {
  stopFollowing();
  desk.current = id;
  desk.view = null;
  desk.announced = '';
  showError($('pay-error'), null);
  try {
    render(await api('GET', `/v1/sessions/${encodeURIComponent(id)}`));
  } catch (e) {
    showError($('pay-error'), e);
    return;
  }
  if (focus) $('pay-title').focus();
  connect();
}

// The progress stream. Each event is the whole session, so after any reconnect the first event
// brings the page up to date. EventSource retries a cut stream by itself; when it gives up
// (an error answer), the page retries with a growing pause, and checks the login first.
function connect() {
  const id = desk.current;
  if (!id || (desk.view && TERMINAL.has(desk.view.state))) return;
  const es = new EventSource(`/v1/sessions/${encodeURIComponent(id)}/events`);
  desk.es = es;
  es.addEventListener('open', () => {
    if (desk.es !== es) return;
    desk.retryMs = 1000;
    setConn('live');
  });
  es.addEventListener('progress', (ev) => {
    if (desk.es !== es) return;
    let v;
    try { v = JSON.parse(ev.data); } catch (e) { return; }
    setConn('live');
    render(v);
    if (TERMINAL.has(v.state)) { stopFollowing(); setConn('idle'); refreshRecent(); }
  });
  es.addEventListener('error', () => {
    if (desk.es !== es) return;
    if (desk.view && TERMINAL.has(desk.view.state)) { stopFollowing(); setConn('idle'); return; }
    setConn('reconnecting');
    if (es.readyState === EventSource.CLOSED) {
      desk.es = null;
      const wait = desk.retryMs;
      desk.retryMs = Math.min(desk.retryMs * 2, 15000);
      desk.retryTimer = setTimeout(async () => {
        try {
          render(await api('GET', `/v1/sessions/${encodeURIComponent(id)}`));
        } catch (e) {
          if (e.status === 401 || e.status === 404 || e.status === 403) return;
        }
        if (desk.current === id) connect();
      }, wait);
    }
  });
}

function setConn(state) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = state === 'live' ? 'Live' : state === 'reconnecting' ? 'Connection lost, reconnecting…' : '';
}

async function command(method, path, body) {
  showError($('pay-error'), null);
  try {
    const v = await api(method, path, body);
    if (v) render(v);
  } catch (e) {
    showError($('pay-error'), e);
  }
}

function requestField(field) {
  const id = encodeURIComponent(desk.current);
  return command('POST', `/v1/sessions/${id}/request-field`, { field });
}

async function onReset() {
  await command('POST', `/v1/sessions/${encodeURIComponent(desk.current)}/reset`);
}

async function onCancel() {
  const id = encodeURIComponent(desk.current);
  await command('DELETE', `/v1/sessions/${id}`);
  try { render(await api('GET', `/v1/sessions/${id}`)); } catch (e) { /* shown by the stream */ }
}

function onClose() {
  if (desk.current) desk.dismissed.add(desk.current);
  stopFollowing();
  desk.current = null;
  desk.view = null;
  setConn('idle');
  $('pay-live').hidden = true;
  $('pay-empty').hidden = false;
  refreshRecent();
  $('amount').focus();
}

async function bindCall(callId) {
  const id = encodeURIComponent(desk.current);
  await command('POST', `/v1/sessions/${id}/bind`, { call_id: callId });
  refreshCalls();
}

// ---- Rendering --------------------------------------------------------------------------------

function dots(n, total) {
  const frag = document.createDocumentFragment();
  let s = '';
  for (let i = 0; i < n; i++) s += (i > 0 && i % 4 === 0 ? ' ' : '') + '•';
  frag.append(s);
  if (total > n) {
    const dim = document.createElement('span');
    dim.className = 'dim';
    let d = '';
    for (let i = n; i < total; i++) d += (i > 0 && i % 4 === 0 ? ' ' : '') + '•';
    dim.textContent = d;
    frag.append(dim);
  }
  return frag;
}

function words(text) {
  const s = document.createElement('span');
  s.className = 'words';
  s.textContent = text;
  return s;
}

function fieldValue(f) {
  const el = document.createElement('div');
  el.className = 'field-value';
  if (f.field === 'pan') {
    if (f.brand) {
      const tag = document.createElement('span');
      tag.className = 'brand-tag';
      tag.textContent = BRANDS[f.brand] || f.brand;
      el.append(tag);
    }
    if (f.state === 'complete' && f.last4) {
      el.append(`•••• •••• •••• ${f.last4}`);
    } else if (f.digits > 0) {
      el.append(dots(f.digits, Math.max(16, f.digits)));
    } else {
      el.append(words(f.confirming ? 'Waiting for the second entry' : 'Not keyed yet'));
    }
  } else if (f.state === 'complete') {
    el.append(words('Complete'));
  } else if (f.state === 'skipped') {
    el.append(words('Skipped'));
  } else if (f.digits > 0) {
    el.append(dots(f.digits, 0));
  } else {
    el.append(words(f.confirming ? 'Waiting for the second entry' : 'Not keyed yet'));
  }
  return el;
}

function fieldState(f, current) {
  if (f.state === 'complete') {
    if (f.field === 'pan') return ['✓ Valid card number', 'ok'];
    if (f.field === 'expiry') return ['✓ Valid date', 'ok'];
    return ['✓ Complete', 'ok'];
  }
  if (f.state === 'skipped') return ['Skipped', 'wait'];
  if (f.state === 'invalid') return [f.reason ? 'Not accepted' : 'Card type not recognised', 'bad'];
  if (f.state === 'valid') return ['Looks valid, waiting for #', 'live'];
  if (f.state === 'capturing') return ['Keying…', 'live'];
  if (f.confirming) return ['Keying again to confirm', 'live'];
  return current ? ['Waiting for the caller', 'wait'] : ['Not yet', 'wait'];
}

function renderField(v, f, capturing) {
  const current = capturing && v.current_field === f.field;
  const li = document.createElement('li');
  li.className = 'field';
  li.dataset.field = f.field;
  li.dataset.state = f.state;
  li.dataset.digits = String(f.digits);
  li.dataset.current = String(current);
  li.id = `field-${f.field}`;

  const name = document.createElement('div');
  name.className = 'field-name';
  name.textContent = FIELD_NAMES[f.field] || f.field;
  if (current) {
    const now = document.createElement('span');
    now.className = 'field-now';
    now.textContent = 'Now';
    name.append(now);
  }
  li.append(name);
  li.append(fieldValue(f));

  const side = document.createElement('div');
  side.className = 'field-side';
  const [stateText, tone] = fieldState(f, current);
  const st = document.createElement('span');
  st.className = 'field-state';
  st.dataset.tone = tone;
  st.textContent = stateText;
  side.append(st);
  if (capturing) {
    const again = document.createElement('button');
    again.type = 'button';
    again.className = 'btn btn-small';
    again.dataset.request = f.field;
    again.textContent = 'Ask again';
    again.setAttribute('aria-label', `Ask the caller for the ${(FIELD_NAMES[f.field] || f.field).toLowerCase()} again`);
    again.addEventListener('click', () => requestField(f.field));
    side.append(again);
  }
  li.append(side);

  if (f.reason && f.state === 'invalid') {
    const msg = document.createElement('p');
    msg.className = 'field-msg';
    msg.textContent = reasonText(f.reason, f.field);
    li.append(msg);
  }
  if (f.attempts > 0 && !ENDED.has(v.state)) {
    const note = document.createElement('p');
    note.className = 'field-note';
    note.textContent = f.attempts_left > 0
      ? `${f.attempts_left} ${f.attempts_left === 1 ? 'attempt' : 'attempts'} left`
      : 'No attempts left: start over or cancel';
    li.append(note);
  }
  return li;
}

function render(v) {
  if (!v || v.id !== desk.current) return;
  const previous = desk.view;
  desk.view = v;
  $('pay-empty').hidden = true;
  $('pay-live').hidden = false;
  $('pay-amount').textContent = v.amount || 'Payment';
  $('pay-ref').textContent = v.reference ? `· ${v.reference}` : '';
  const [label, tone] = STATUS[v.state] || [v.state, 'wait'];
  const status = $('status');
  status.textContent = v.capture === 'failed' && !ENDED.has(v.state) ? 'Too many attempts' : label;
  status.dataset.tone = v.capture === 'failed' && !ENDED.has(v.state) ? 'bad' : tone;

  const waiting = v.state === 'pending';
  $('locator-box').hidden = !waiting;
  $('locator').textContent = v.locator;
  $('locator').setAttribute('aria-label', `Transfer code ${v.locator.split('').join(' ')}`);

  const ended = ENDED.has(v.state);
  const res = resultText(v);
  const result = $('result');
  if (res) {
    result.textContent = res[0];
    result.dataset.tone = res[1];
    result.hidden = false;
  } else if (v.error === 'max_attempts') {
    result.textContent = 'The caller ran out of attempts on a field. Start over, or cancel the payment.';
    result.dataset.tone = 'bad';
    result.hidden = false;
  } else {
    result.hidden = true;
  }

  const capturing = v.state === 'capturing' || v.state === 'bound';
  // Re-rendering must not take the keyboard focus away from the agent's button.
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.request : undefined;
  $('fields').replaceChildren(...v.fields.map((f) => renderField(v, f, capturing && v.capture !== 'complete')));
  if (focused) {
    const again = $('fields').querySelector(`button[data-request="${focused}"]`);
    if (again) again.focus();
  }
  $('reset').hidden = ended || v.state === 'pending';
  $('cancel').hidden = ended;
  $('close').hidden = !ended;
  if (ended && previous && !ENDED.has(previous.state)) $('close').focus();
  if (waiting !== (previous && previous.state === 'pending')) refreshCalls();
  if (!previous || previous.state !== v.state) refreshRecent();
  announce(v);
}

// One short sentence for screen readers when something worth saying changes.
function announce(v) {
  let text = '';
  const res = resultText(v);
  if (res) {
    text = res[0];
  } else {
    const bad = v.fields.find((f) => f.state === 'invalid' && f.reason);
    const cur = v.fields.find((f) => f.field === v.current_field);
    if (bad) text = reasonText(bad.reason, bad.field);
    else if (cur) text = `${FIELD_NAMES[cur.field] || cur.field}: ${cur.digits} digits`;
    const pan = v.fields.find((f) => f.field === 'pan' && f.state === 'complete' && f.last4);
    if (pan && !bad) text = `Card ${BRANDS[pan.brand] || ''} ending ${pan.last4.split('').join(' ')} accepted. ${text}`;
  }
  if (text && text !== desk.announced) {
    desk.announced = text;
    $('announce').textContent = text;
  }
}

// ---- Start ------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', onLogout);
  $('new-form').addEventListener('submit', onStart);
  $('calls-refresh').addEventListener('click', refreshCalls);
  $('reset').addEventListener('click', onReset);
  $('cancel').addEventListener('click', onCancel);
  $('close').addEventListener('click', onClose);
  try {
    loggedIn(await api('GET', '/v1/desk/me'));
  } catch (e) {
    loggedOut();
  }
});
