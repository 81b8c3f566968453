// The Redoubt web console's script: plain JavaScript, no build step. Pages are rendered by the
// console; this file refreshes them in place, follows the initialization event stream, drives
// the Change Replication Group wizard and sends the recovery actions. Every request that
// changes something carries the session's CSRF token (X-CSRF-Token).
'use strict';

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : '';

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({
      '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
    }[c]));
  }

  // A value for people: a dash for what is unknown.
  function shown(value) {
    return value === undefined || value === null ? '–' : value;
  }

  // A JSON request to the console; resolves to {status, body}.
  async function api(method, path, body) {
    const options = { method, headers: { 'Accept': 'application/json' }, credentials: 'same-origin' };
    if (method !== 'GET') {
      options.headers['X-CSRF-Token'] = csrf;
    }
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let parsed = null;
    try { parsed = await response.json(); } catch (_) { parsed = null; }
    return { status: response.status, body: parsed };
  }

  function errorText(result) {
    const body = result.body || {};
    let text = body.error || ('HTTP ' + result.status);
    if (Array.isArray(body.errors) && body.errors.length) {
      text += ': ' + body.errors.join('; ');
    }
    return text;
  }

  // The confirmation dialog: resolves true only when the operator presses Confirm.
  function confirmAction(question) {
    const dialog = document.getElementById('confirm-dialog');
    if (!dialog) { return Promise.resolve(false); }
    document.getElementById('confirm-text').textContent = question;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
    });
  }

  // Replaces element's content with the page fragment at url; `isCurrent` (optional) may
  // veto an answer that became stale while it travelled. Returns whether it was applied.
  async function refreshInto(element, url, isCurrent) {
    const response = await fetch(url, { credentials: 'same-origin' });
    if (response.status === 401) { window.location.href = '/ui/login'; return false; }
    if (!response.ok) { return false; }
    const html = await response.text();
    if (isCurrent && !isCurrent()) { return false; }
    element.innerHTML = html;
    return true;
  }

  // ---- Dashboard --------------------------------------------------------------------------

  const dashboard = document.getElementById('dashboard');
  if (dashboard) {
    setInterval(() => { refreshInto(dashboard, dashboard.dataset.refresh).catch(() => {}); }, 5000);
  }

  function pointText(point) {
    if (!point) { return '–'; }
    return 'seq ' + point.seq + (point.time ? ' (' + point.time + ')' : '');
  }

  async function loadRecovery(group) {
    const points = document.querySelector('[data-points="' + group + '"]');
    const snapshots = document.querySelector('[data-snapshots="' + group + '"]');
    if (points) {
      const result = await api('GET', '/v1/groups/' + encodeURIComponent(group) + '/points');
      if (result.status === 200 && result.body) {
        // A server that did not answer (an old production after a failover, say) has an error
        // and no window: say why, never print JavaScript's undefined.
        const servers = (result.body.servers || []).map((s) => s.error !== undefined ?
          '<tr><td>' + escapeHtml(s.server) + '</td><td>' + escapeHtml(s.role || '') +
          '</td><td colspan="3" class="error" data-testid="points-error">' + escapeHtml(s.error) + '</td></tr>' :
          '<tr><td>' + escapeHtml(s.server) + '</td><td>' + escapeHtml(s.role || '') + '</td><td>seq ' +
          escapeHtml(shown(s.first_seq)) + ' … ' + escapeHtml(shown(s.last_seq)) + '</td><td>' +
          escapeHtml(s.first_time || '–') + ' … ' + escapeHtml(s.last_time || '–') + '</td><td>' +
          escapeHtml(shown(s.applied_seq)) + (s.paused ? ' (apply paused)' : '') + '</td></tr>').join('');
        const markers = (result.body.markers || []).map((m) =>
          '<li>' + escapeHtml(m.name) + ' — seq ' + escapeHtml(m.seq) + ' ' + escapeHtml(m.time || '') + '</li>').join('');
        points.innerHTML = '<h3>Restore points</h3><table><thead><tr><th>server</th><th>role</th>' +
          '<th>window (seq)</th><th>window (time)</th><th>applied</th></tr></thead><tbody>' + servers +
          '</tbody></table><h3>Markers</h3>' + (markers ? '<ul class="markers">' + markers + '</ul>' : '<p class="hint">No markers yet.</p>');
      } else {
        points.innerHTML = '<p class="hint">Restore points: ' + escapeHtml(errorText(result)) + '</p>';
      }
    }
    if (snapshots) {
      const result = await api('GET', '/v1/groups/' + encodeURIComponent(group) + '/snapshots');
      if (result.status === 200 && result.body) {
        const rows = (result.body.snapshots || []).map((s) =>
          '<tr data-snapshot="' + escapeHtml(s.name) + '"><td>' + escapeHtml(s.name) + '</td><td>' + escapeHtml(s.server) +
          '</td><td>' + escapeHtml(pointText(s.point)) + '</td><td>' + (s.writable ? 'writable' : 'read-only') +
          '</td><td>' + (s.exports || []).map((e) => '<code>' + escapeHtml(e.export) + '</code>').join('<br>') +
          '</td><td>' + escapeHtml(s.snapshot_usage_pct === undefined ? '–' : Number(s.snapshot_usage_pct).toFixed(1) + ' %') + '</td></tr>').join('');
        snapshots.innerHTML = '<h3>Snapshots</h3>' + (rows
          ? '<table><thead><tr><th>name</th><th>server</th><th>point</th><th>access</th><th>exports</th><th>usage</th></tr></thead><tbody>' + rows + '</tbody></table>'
          : '<p class="hint">No snapshots.</p>');
      }
    }
  }

  async function followOperation(id, result) {
    for (;;) {
      const op = await api('GET', '/v1/operations/' + encodeURIComponent(id));
      if (op.status !== 200 || !op.body) {
        result.textContent = 'Operation ' + id + ': ' + errorText(op);
        return;
      }
      const pct = op.body.pct === undefined || op.body.pct === null ? 0 : Number(op.body.pct);
      result.innerHTML = escapeHtml(op.body.kind || 'operation') + ' ' + escapeHtml(id) + ': <progress max="100" value="' +
        pct.toFixed(0) + '"></progress> ' + pct.toFixed(0) + ' % ' + escapeHtml(op.body.message || '');
      if (op.body.state === 'done') {
        result.textContent = (op.body.kind || 'operation') + ' ' + id + ' done. ' + (op.body.message || '');
        return;
      }
      if (op.body.state === 'failed') {
        result.textContent = (op.body.kind || 'operation') + ' ' + id + ' failed: ' + (op.body.error || op.body.message || '');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  function actionRequest(form) {
    const group = form.dataset.group;
    const data = new FormData(form);
    const base = '/v1/groups/' + encodeURIComponent(group);
    const value = (name) => { const v = data.get(name); return v === null || v === '' ? undefined : String(v); };
    switch (form.dataset.action) {
      case 'mark': return [base + '/marks', { name: value('name') }];
      case 'snapshot': return [base + '/snapshots', { server: value('server'), at: value('at') || 'latest', writable: data.get('writable') !== null, name: value('name') }];
      case 'rollback': return [base + '/rollback', { server: value('server'), to: value('to'), confirm: true }];
      case 'failover': return [base + '/failover', { server: value('server'), at: value('at'), test: data.get('test') !== null, confirm: true }];
      case 'failback': return [base + '/failback', { confirm: true }];
      default: return [null, null];
    }
  }

  document.querySelectorAll('form.action').forEach((form) => {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const group = form.dataset.group;
      const result = document.querySelector('[data-result="' + group + '"]');
      if (form.dataset.confirm && !(await confirmAction(form.dataset.confirm))) {
        result.textContent = 'Cancelled: nothing was changed.';
        return;
      }
      const [path, body] = actionRequest(form);
      if (!path) { return; }
      result.textContent = 'Sending…';
      const answer = await api('POST', path, body);
      if (answer.status === 202 && answer.body && answer.body.operation) {
        await followOperation(answer.body.operation, result);
      } else if (answer.status >= 200 && answer.status < 300) {
        const b = answer.body || {};
        if (form.dataset.action === 'snapshot') {
          result.textContent = 'Snapshot ' + b.name + ' of ' + b.server + ' at ' + pointText(b.point) + ' created: ' +
            (b.exports || []).map((e) => e.volume + ' ' + e.export).join(', ');
        } else if (form.dataset.action === 'mark') {
          result.textContent = 'Marker ' + b.name + ' written at seq ' + b.seq + '.';
        } else {
          result.textContent = 'Done.';
        }
      } else {
        result.textContent = 'Refused: ' + errorText(answer);
      }
      loadRecovery(group).catch(() => {});
    });
  });
  document.querySelectorAll('section.recovery').forEach((section) => {
    loadRecovery(section.dataset.group).catch(() => {});
  });

  // ---- Configuration Window ---------------------------------------------------------------

  const windowContainer = document.getElementById('window-container');
  if (windowContainer) {
    const log = document.getElementById('event-log');
    let pending = null;
    let source = null;
    // Bumped by every event applied to the page: a refresh rendered before an event arrived
    // would take its checkmark back, so such an answer is dropped and fetched again.
    let generation = 0;
    const refresh = () => {
      if (pending) { return; }
      pending = setTimeout(() => {
        pending = null;
        const started = generation;
        refreshInto(windowContainer, windowContainer.dataset.refresh, () => generation === started)
          .then((applied) => { if (!applied && generation !== started) { refresh(); } })
          .catch(() => {});
      }, 300);
    };
    const describe = (event) => {
      let row = '';
      if (event.row && event.row.server) { row = ' on ' + event.row.server; }
      if (event.row && event.row.volume) { row = ' volume ' + event.row.volume; }
      if (event.step !== undefined) {
        return 'step ' + event.step + row + ': ' + event.state + (event.error ? ' — ' + event.error : '');
      }
      return 'initialization ' + (event.version !== undefined ? 'to version ' + event.version + ' ' : '') + event.state + (event.error ? ' — ' + event.error : '');
    };
    const MARKS = { done: '\u2713', running: '\u25b6', failed: '\u2717', pending: '\u00b7' };
    const setState = (element, state) => {
      element.classList.remove('done', 'running', 'failed', 'pending');
      element.classList.add(state);
      element.dataset.state = state;
      const mark = element.querySelector(':scope > .mark');
      if (mark) { mark.textContent = MARKS[state] || MARKS.pending; }
    };
    // Applies one row event to the step list at once (the checkmark appears as the row ends);
    // the server-rendered refresh that follows confirms it.
    const apply = (event) => {
      const step = windowContainer.querySelector('li.step[data-step="' + event.step + '"]');
      if (!step) { return; }
      const rows = Array.from(step.querySelectorAll('li.row'));
      let row = null;
      if (event.row && event.row.server) { row = rows.find((r) => r.dataset.server === event.row.server); }
      if (event.row && event.row.volume) { row = rows.find((r) => r.dataset.volume === event.row.volume); }
      if (row) { setState(row, event.state); }
      const states = rows.length ? rows.map((r) => r.dataset.state) : [event.state];
      let state = 'pending';
      if (states.includes('failed')) { state = 'failed'; }
      else if (states.every((s) => s === 'done')) { state = 'done'; }
      else if (states.some((s) => s === 'running' || s === 'done')) { state = 'running'; }
      setState(step, state);
      // The progress section follows the rows.
      let done = 0;
      let total = 0;
      windowContainer.querySelectorAll('li.step').forEach((li) => {
        const stepRows = li.querySelectorAll('li.row');
        if (stepRows.length) {
          total += stepRows.length;
          stepRows.forEach((r) => { if (r.dataset.state === 'done') { done += 1; } });
        } else {
          total += 1;
          if (li.dataset.state === 'done') { done += 1; }
        }
      });
      const bar = windowContainer.querySelector('section.progress progress');
      const text = windowContainer.querySelector('[data-testid="progress-text"]');
      if (bar && total) { bar.value = Math.round((done * 100) / total); }
      if (text) { text.textContent = done + ' of ' + total + ' rows done · running'; }
    };
    const follow = () => {
      if (source) { source.close(); }
      source = new EventSource(windowContainer.dataset.events);
      source.onmessage = (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (_) { return; }
        const item = document.createElement('li');
        item.textContent = new Date().toLocaleTimeString() + '  ' + describe(event);
        item.className = event.state || '';
        log.prepend(item);
        while (log.children.length > 200) { log.removeChild(log.lastChild); }
        generation += 1;
        if (event.step !== undefined) { apply(event); }
        refresh();
        if (event.step === undefined) {
          // The final event (done, failed) or "idle": the stream ends; do not reconnect.
          source.close();
          refresh();
        }
      };
      source.onerror = () => { if (source.readyState === EventSource.CLOSED) { refresh(); } };
    };
    follow();
    windowContainer.addEventListener('click', async (event) => {
      const button = event.target.closest('button[data-retry]');
      if (!button) { return; }
      button.disabled = true;
      const answer = await api('POST', '/v1/init/' + encodeURIComponent(button.dataset.retry) + '/retry');
      if (answer.status !== 200) {
        button.disabled = false;
        button.insertAdjacentText('afterend', ' ' + errorText(answer));
        return;
      }
      follow();
      refresh();
    });
  }

  // ---- Change Replication Group wizard ----------------------------------------------------

  const wizard = document.getElementById('wizard');
  if (wizard) {
    const panels = Array.from(wizard.querySelectorAll('fieldset.panel'));
    const steps = Array.from(wizard.querySelectorAll('.wizard-nav li'));
    const back = document.getElementById('back');
    const next = document.getElementById('next');
    const finish = document.getElementById('finish');
    const problem = document.getElementById('wizard-error');
    const planBox = document.getElementById('plan');
    let current = 0;
    let composed = null;

    const show = (index) => {
      current = index;
      panels.forEach((panel, i) => { panel.hidden = i !== index; });
      steps.forEach((step, i) => { step.classList.toggle('current', i === index); step.classList.toggle('done', i < index); });
      back.disabled = index === 0;
      next.hidden = index === panels.length - 1;
      finish.hidden = index !== panels.length - 1;
    };

    const formValue = () => {
      const field = (name) => { const input = wizard.querySelector('[name="' + name + '"]'); return input ? input.value.trim() : ''; };
      const newName = field('new_name');
      return {
        volumes: Array.from(wizard.querySelectorAll('table.volumes tbody tr')).map((row) => ({
          name: row.dataset.volume,
          size: row.querySelector('input[name="size"]').value.trim(),
          remove: row.querySelector('input[name="remove"]').checked,
        })),
        add_volumes: Array.from(wizard.querySelectorAll('table.add-volumes tbody tr')).map((row) => ({
          name: row.querySelector('input[name="add_name"]').value.trim(),
          size: row.querySelector('input[name="add_size"]').value.trim(),
        })),
        replication: field('replication'),
        log_record_file: field('log_record_file'),
        snapshot: field('snapshot'),
        recovery: Array.from(wizard.querySelectorAll('input[name="recovery"]:checked')).map((box) => box.value),
        new_server: newName ? { name: newName, address: field('new_address'), data_dir: field('new_data_dir') } : null,
        mode: field('mode'),
        retention: field('retention'),
        throttle: field('throttle'),
        compression: field('compression'),
      };
    };

    document.getElementById('add-volume').addEventListener('click', () => {
      const row = document.createElement('tr');
      row.innerHTML = '<td><input name="add_name" placeholder="lv_name"></td><td><input name="add_size" placeholder="64MiB"></td>';
      wizard.querySelector('table.add-volumes tbody').appendChild(row);
      row.querySelector('input').focus();
    });

    const computePlan = async () => {
      composed = null;
      finish.disabled = true;
      problem.hidden = true;
      planBox.innerHTML = '<p class="hint">Computing the plan…</p>';
      const answer = await api('POST', '/ui/groups/' + encodeURIComponent(wizard.dataset.group) + '/change/plan', formValue());
      if (answer.status !== 200 || !answer.body) {
        planBox.innerHTML = '';
        problem.textContent = errorText(answer);
        problem.hidden = false;
        return;
      }
      planBox.innerHTML = answer.body.html;
      if (Array.isArray(answer.body.plans) && answer.body.plans.length > 0) {
        composed = answer.body;
        finish.disabled = false;
      }
    };

    back.addEventListener('click', () => { if (current > 0) { show(current - 1); } });
    next.addEventListener('click', () => {
      if (current < panels.length - 1) {
        show(current + 1);
        if (current === panels.length - 1) { computePlan().catch((e) => { problem.textContent = String(e); problem.hidden = false; }); }
      }
    });
    finish.addEventListener('click', async () => {
      if (!composed) { return; }
      const deletes = planBox.textContent.includes('DELETES DATA');
      const question = deletes
        ? 'This initialization DELETES DATA as listed in the summary. Save the configuration and run it?'
        : 'Save the configuration and run its initialization?';
      if (!(await confirmAction(question))) { return; }
      finish.disabled = true;
      // The operator confirmed in the dialog: destructive plans need it said (412 otherwise).
      const answer = await api('POST', '/v1/config', { toml: composed.toml, confirm: true });
      if (answer.status !== 200) {
        problem.textContent = errorText(answer);
        problem.hidden = false;
        finish.disabled = false;
        return;
      }
      window.location.href = '/ui/groups/' + encodeURIComponent(wizard.dataset.group);
    });
    show(0);
  }
})();
