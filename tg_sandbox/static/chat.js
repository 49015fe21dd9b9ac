// Web chat for the StatsBot Telegram sandbox. Vanilla JS, no build step.
// Bot text is rendered from text + entities with DOM nodes only (never innerHTML).
"use strict";

(function () {
  const USERS_KEY = "statsbot-sandbox-users"; // {name: userId}
  const CURRENT_KEY = "statsbot-sandbox-current"; // name
  const POLL_SECONDS = 25;
  const TYPING_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const el = {
    loginScreen: $("login-screen"), loginForm: $("login-form"), nameInput: $("name-input"),
    userIdNote: $("user-id-note"), knownUsers: $("known-users"), knownUsersList: $("known-users-list"),
    chatScreen: $("chat-screen"), chatBody: $("chat-body"), messages: $("messages"), emptyChat: $("empty-chat"),
    status: $("chat-status"), currentUser: $("current-user"), switchUser: $("switch-user"),
    typing: $("typing-indicator"), typingText: $("typing-text"), hints: $("command-hints"),
    composer: $("composer"), input: $("message-input"), send: $("send-button"), fileInput: $("file-input"),
    commandsButton: $("commands-button"), toast: $("toast"), replyKeyboard: $("reply-keyboard"),
  };

  const session = { id: 0, userId: null, name: "", last: 0, botName: "StatsBot", commands: [] };
  const rendered = new Map(); // message_id -> version
  let typingTimer = null;
  let toastTimer = null;

  // ------------------------------------------------------------------ storage

  function knownUsers() {
    try { return JSON.parse(localStorage.getItem(USERS_KEY) || "{}") || {}; } catch (e) { return {}; }
  }

  function userIdFor(name) {
    const users = knownUsers();
    if (!users[name]) {
      // A random id per browser and name, like a Telegram user id (kept in localStorage).
      users[name] = 100000000 + Math.floor(Math.random() * 800000000);
      localStorage.setItem(USERS_KEY, JSON.stringify(users));
    }
    return users[name];
  }

  // ------------------------------------------------------------------ API

  async function api(path, options) {
    const response = await fetch(path, options);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new Error((body && (body.error || body.description)) || `HTTP ${response.status}`);
    }
    return body;
  }

  function postJson(path, data) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
  }

  const userPath = (suffix) => `/sandbox/api/users/${session.userId}/${suffix}`;
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ------------------------------------------------------------------ formatting

  const SAFE_URL = /^(https?:|mailto:|tg:)/i;

  function elementFor(entity, text) {
    let node;
    switch (entity.type) {
      case "bold": node = document.createElement("strong"); break;
      case "italic": node = document.createElement("em"); break;
      case "underline": node = document.createElement("u"); break;
      case "strikethrough": node = document.createElement("s"); break;
      case "code": node = document.createElement("code"); break;
      case "pre": {
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        if (entity.language) code.dataset.language = entity.language;
        pre.appendChild(code);
        return { outer: pre, inner: code };
      }
      case "spoiler":
        node = document.createElement("span");
        node.className = "spoiler";
        node.title = "Spoiler: click to reveal";
        node.addEventListener("click", () => node.classList.toggle("revealed"));
        break;
      case "blockquote": case "expandable_blockquote":
        node = document.createElement("blockquote"); break;
      case "text_link": case "url": {
        const href = entity.type === "url" ? text : entity.url;
        if (href && SAFE_URL.test(href)) {
          node = document.createElement("a");
          node.href = href;
          node.target = "_blank";
          node.rel = "noopener noreferrer";
        } else {
          node = document.createElement("span");
        }
        break;
      }
      case "bot_command":
        node = document.createElement("a");
        node.href = "#";
        node.className = "command";
        node.addEventListener("click", (event) => {
          event.preventDefault();
          sendText(text.split("@")[0]);
        });
        break;
      default:
        node = document.createElement("span");
        node.dataset.entity = entity.type;
    }
    return { outer: node, inner: node };
  }

  const BLOCK_TYPES = new Set(["pre", "blockquote", "expandable_blockquote"]);

  // Text between entities; one newline next to a block (pre, quote) is the block's own line break.
  function appendText(parent, text, afterBlock, beforeBlock) {
    let value = text;
    if (afterBlock && value.startsWith("\n")) value = value.slice(1);
    if (beforeBlock && value.endsWith("\n")) value = value.slice(0, -1);
    if (value) parent.appendChild(document.createTextNode(value));
  }

  // Offsets and lengths are UTF-16 code units, which is how JS strings index.
  function build(parent, text, start, end, entities) {
    let pos = start;
    let afterBlock = false;
    let i = 0;
    while (i < entities.length) {
      const entity = entities[i];
      const from = Math.max(entity.offset, start);
      const to = Math.min(entity.offset + entity.length, end);
      if (from < pos || to <= from) { i += 1; continue; }
      const isBlock = BLOCK_TYPES.has(entity.type);
      if (from > pos) appendText(parent, text.slice(pos, from), afterBlock, isBlock);
      const inner = [];
      let j = i + 1;
      while (j < entities.length && entities[j].offset < to) { inner.push(entities[j]); j += 1; }
      const node = elementFor(entity, text.slice(from, to));
      build(node.inner, text, from, to, inner);
      parent.appendChild(node.outer);
      afterBlock = isBlock;
      pos = to;
      i = j;
    }
    if (pos < end) appendText(parent, text.slice(pos, end), afterBlock, false);
  }

  function formatted(text, entities) {
    const container = document.createElement("div");
    container.className = "text";
    const sorted = (entities || []).slice().sort((a, b) => a.offset - b.offset || b.length - a.length);
    build(container, text, 0, text.length, sorted);
    return container;
  }

  function humanSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function timeOf(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // ------------------------------------------------------------------ messages

  function keyboardFor(message) {
    const rows = (message.reply_markup && message.reply_markup.inline_keyboard) || [];
    if (!rows.length) return null;
    const keyboard = document.createElement("div");
    keyboard.className = "keyboard";
    keyboard.setAttribute("role", "group");
    keyboard.setAttribute("aria-label", "Message buttons");
    for (const row of rows) {
      const rowNode = document.createElement("div");
      rowNode.className = "keyboard-row";
      for (const button of row) {
        let node;
        if (button.url) {
          node = document.createElement("a");
          node.className = "inline-button url";
          if (SAFE_URL.test(button.url)) node.href = button.url;
          node.target = "_blank";
          node.rel = "noopener noreferrer";
        } else {
          node = document.createElement("button");
          node.type = "button";
          node.className = "inline-button";
          if (button.callback_data !== undefined) {
            node.addEventListener("click", () => tap(message.message_id, button.callback_data, node));
          } else {
            node.disabled = true;
            node.title = "This kind of button is not emulated";
          }
        }
        node.textContent = button.text;
        rowNode.appendChild(node);
      }
      keyboard.appendChild(rowNode);
    }
    return keyboard;
  }

  function renderMessage(message) {
    const fromBot = Boolean(message.from && message.from.is_bot);
    const item = document.createElement("li");
    item.className = `message ${fromBot ? "bot" : "user"}`;
    item.dataset.messageId = String(message.message_id);
    item.dataset.version = String(message.version || 1);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const label = document.createElement("span");
    label.className = "visually-hidden";
    label.textContent = fromBot ? `${session.botName}: ` : "You: ";
    bubble.appendChild(label);

    if (message.photo && message.photo.length) {
      const largest = message.photo[message.photo.length - 1];
      const media = document.createElement("div");
      media.className = "media";
      const img = document.createElement("img");
      img.src = `/sandbox/files/${encodeURIComponent(largest.file_id)}`;
      img.alt = message.caption || "Photo";
      img.width = largest.width;
      img.height = largest.height;
      img.style.height = "auto";
      img.addEventListener("load", () => scrollToEnd(true));
      media.appendChild(img);
      bubble.appendChild(media);
    }
    if (message.document) {
      const doc = message.document;
      const link = document.createElement("a");
      link.className = "document";
      link.href = `/sandbox/files/${encodeURIComponent(doc.file_id)}`;
      link.setAttribute("download", doc.file_name || "file");
      const icon = document.createElement("span");
      icon.className = "doc-icon";
      icon.setAttribute("aria-hidden", "true");
      icon.textContent = "⬇";
      const info = document.createElement("span");
      const name = document.createElement("span");
      name.className = "doc-name";
      name.textContent = doc.file_name || "file";
      const size = document.createElement("span");
      size.className = "doc-size";
      size.textContent = ` ${humanSize(doc.file_size || 0)}`;
      info.append(name, document.createElement("br"), size);
      link.append(icon, info);
      bubble.appendChild(link);
    }
    if (typeof message.text === "string") {
      bubble.appendChild(formatted(message.text, message.entities));
    } else if (typeof message.caption === "string") {
      bubble.appendChild(formatted(message.caption, message.caption_entities));
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    if (message.edit_date) {
      const edited = document.createElement("span");
      edited.className = "edited";
      edited.textContent = "edited";
      meta.appendChild(edited);
    }
    const time = document.createElement("time");
    time.dateTime = new Date(message.date * 1000).toISOString();
    time.textContent = timeOf(message.date);
    meta.appendChild(time);
    bubble.appendChild(meta);
    item.appendChild(bubble);
    const keyboard = keyboardFor(message);
    if (keyboard) item.appendChild(keyboard);
    return item;
  }

  // A ReplyKeyboardMarkup / ReplyKeyboardRemove / ForceReply sent with a bot message.
  function applyClientMarkup(markup) {
    if (!markup) return;
    if (markup.remove_keyboard) {
      el.replyKeyboard.hidden = true;
      el.replyKeyboard.textContent = "";
    } else if (markup.keyboard) {
      el.replyKeyboard.textContent = "";
      for (const row of markup.keyboard) {
        const rowNode = document.createElement("div");
        rowNode.className = "reply-keyboard-row";
        for (const button of row) {
          const label = typeof button === "string" ? button : button.text;
          const node = document.createElement("button");
          node.type = "button";
          node.className = "reply-button";
          node.textContent = label;
          node.addEventListener("click", () => {
            if (markup.one_time_keyboard) el.replyKeyboard.hidden = true;
            sendText(label);
          });
          rowNode.appendChild(node);
        }
        el.replyKeyboard.appendChild(rowNode);
      }
      el.replyKeyboard.hidden = false;
    }
    if (markup.input_field_placeholder) el.input.placeholder = markup.input_field_placeholder;
    if (markup.force_reply) el.input.focus();
  }

  function nearBottom() {
    const body = el.chatBody;
    return body.scrollHeight - body.scrollTop - body.clientHeight < 120;
  }

  function scrollToEnd(onlyIfNear) {
    if (!onlyIfNear || nearBottom()) el.chatBody.scrollTop = el.chatBody.scrollHeight;
  }

  function upsert(message) {
    const known = rendered.get(message.message_id);
    const version = message.version || 1;
    if (known !== undefined && known >= version && !message.deleted) return;
    const existing = el.messages.querySelector(`li[data-message-id="${message.message_id}"]`);
    if (message.deleted) {
      if (existing) existing.remove();
      rendered.set(message.message_id, Infinity);
      updateEmpty();
      return;
    }
    const wasNear = nearBottom();
    const node = renderMessage(message);
    rendered.set(message.message_id, version);
    if (existing) {
      existing.replaceWith(node);
    } else {
      // keep message_id order even if events arrive out of order
      const later = Array.from(el.messages.children).find((li) => Number(li.dataset.messageId) > message.message_id);
      el.messages.insertBefore(node, later || null);
      if (message.from && message.from.is_bot) {
        hideTyping();
        applyClientMarkup(message.client_reply_markup);
      }
    }
    updateEmpty();
    if (wasNear || !(message.from && message.from.is_bot)) scrollToEnd(false);
  }

  function updateEmpty() {
    el.emptyChat.hidden = el.messages.children.length > 0;
  }

  // ------------------------------------------------------------------ events

  function showToast(text, alert) {
    el.toast.textContent = text;
    el.toast.classList.toggle("alert", Boolean(alert));
    el.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.toast.hidden = true; }, alert ? 6000 : 3000);
  }

  function showTyping(action) {
    const words = {
      typing: "is typing…", upload_photo: "is sending a photo…", upload_document: "is sending a file…",
    };
    const text = `${session.botName} ${words[action] || "is busy…"}`;
    el.typingText.textContent = text;
    el.typing.hidden = false;
    el.status.textContent = words[action] ? words[action].replace(/^is /, "") : "busy…";
    el.status.classList.add("typing");
    clearTimeout(typingTimer);
    typingTimer = setTimeout(hideTyping, TYPING_MS);
  }

  function hideTyping() {
    clearTimeout(typingTimer);
    el.typing.hidden = true;
    el.status.textContent = "bot";
    el.status.classList.remove("typing");
  }

  function handleEvent(event) {
    switch (event.kind) {
      case "message": case "edit": case "delete":
        if (event.message) upsert(event.message);
        break;
      case "callback_answer": {
        const answer = event.callback_answer || {};
        for (const node of el.messages.querySelectorAll(".inline-button.pending")) node.classList.remove("pending");
        if (answer.text) showToast(answer.text, answer.show_alert);
        if (answer.url && SAFE_URL.test(answer.url)) window.open(answer.url, "_blank", "noopener");
        break;
      }
      case "chat_action":
        showTyping(event.action);
        break;
      default:
        break;
    }
  }

  async function loadHistory(current) {
    const body = await api(userPath("messages"));
    if (current !== session.id) return;
    el.messages.textContent = "";
    rendered.clear();
    for (const message of body.messages) upsert(message);
    el.replyKeyboard.hidden = true;
    el.input.placeholder = "Message";
    applyClientMarkup(body.reply_keyboard);
    session.last = body.last;
    updateEmpty();
    scrollToEnd(false);
  }

  async function pollLoop(current) {
    let failures = 0;
    while (current === session.id) {
      try {
        const body = await api(`${userPath("events")}?after=${session.last}&timeout=${POLL_SECONDS}`);
        if (current !== session.id) return;
        if (body.last < session.last) {
          await loadHistory(current); // the sandbox restarted: start over
          continue;
        }
        for (const event of body.events) handleEvent(event);
        session.last = Math.max(session.last, body.last);
        if (failures) el.status.textContent = "bot";
        failures = 0;
      } catch (error) {
        failures += 1;
        el.status.textContent = "connecting…";
        await pause(Math.min(500 * 2 ** failures, 8000)); // back off while the sandbox is unreachable
      }
    }
  }

  async function loadCommands() {
    try {
      const body = await api("/sandbox/api/bot");
      session.botName = body.bot.first_name || "StatsBot";
      session.commands = body.commands || [];
      for (const node of document.querySelectorAll(".bot-title")) node.textContent = session.botName;
    } catch (error) {
      session.commands = [];
    }
  }

  // ------------------------------------------------------------------ command hints

  function renderHints(filter) {
    const prefix = filter.replace(/^\//, "").toLowerCase();
    const matching = session.commands.filter((c) => c.command.startsWith(prefix));
    el.hints.textContent = "";
    if (!matching.length) { hideHints(); return; }
    for (const command of matching) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "command-hint";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = `/${command.command}`;
      const description = document.createElement("span");
      description.className = "description";
      description.textContent = command.description;
      button.append(name, description);
      button.addEventListener("click", () => { hideHints(); sendText(`/${command.command}`); });
      li.appendChild(button);
      el.hints.appendChild(li);
    }
    el.hints.hidden = false;
    el.commandsButton.setAttribute("aria-expanded", "true");
  }

  function hideHints() {
    el.hints.hidden = true;
    el.commandsButton.setAttribute("aria-expanded", "false");
  }

  // ------------------------------------------------------------------ actions

  async function sendText(text) {
    const value = text.trim();
    if (!value) return;
    try {
      const message = await postJson(userPath("messages"), { text: value, first_name: session.name });
      upsert(message);
    } catch (error) {
      showToast(`Not sent: ${error.message}`);
    }
  }

  async function tap(messageId, data, node) {
    node.classList.add("pending");
    try {
      await postJson(userPath("callback"), { message_id: messageId, data: data });
      setTimeout(() => node.classList.remove("pending"), 10000);
    } catch (error) {
      node.classList.remove("pending");
      showToast(`Button failed: ${error.message}`);
    }
  }

  async function uploadFile(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("first_name", session.name);
    const caption = el.input.value.trim();
    if (caption) form.append("caption", caption);
    try {
      const message = await api(userPath("upload"), { method: "POST", body: form });
      el.input.value = "";
      upsert(message);
    } catch (error) {
      showToast(`Upload failed: ${error.message}`);
    }
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${Math.min(el.input.scrollHeight, 160)}px`;
  }

  // ------------------------------------------------------------------ screens

  function showLogin() {
    session.id += 1; // stops the running poll loop
    hideTyping();
    el.chatScreen.hidden = true;
    el.loginScreen.hidden = false;
    const users = knownUsers();
    const names = Object.keys(users);
    el.knownUsersList.textContent = "";
    for (const name of names) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = name;
      button.addEventListener("click", () => startChat(name));
      li.appendChild(button);
      el.knownUsersList.appendChild(li);
    }
    el.knownUsers.hidden = names.length === 0;
    el.nameInput.value = localStorage.getItem(CURRENT_KEY) || "";
    updateIdNote();
    el.nameInput.focus();
  }

  function updateIdNote() {
    const name = el.nameInput.value.trim();
    const users = knownUsers();
    el.userIdNote.textContent = name && users[name] ? `Telegram user id ${users[name]} (kept in this browser)` : "";
  }

  async function startChat(name) {
    session.id += 1;
    const current = session.id;
    session.name = name;
    session.userId = userIdFor(name);
    session.last = 0;
    localStorage.setItem(CURRENT_KEY, name);
    el.currentUser.textContent = `${name} · id ${session.userId}`;
    el.loginScreen.hidden = true;
    el.chatScreen.hidden = false;
    el.messages.textContent = "";
    rendered.clear();
    updateEmpty();
    el.input.focus();
    await loadCommands();
    try {
      await loadHistory(current);
    } catch (error) {
      showToast(`Could not load the chat: ${error.message}`);
    }
    pollLoop(current);
    await followStartLink();
  }

  // A deep link (…/?start=PAYLOAD, like t.me/<bot>?start=PAYLOAD) sends "/start PAYLOAD" once.
  async function followStartLink() {
    const params = new URLSearchParams(location.search);
    const payload = params.get("start");
    if (!payload) return;
    params.delete("start");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
    await sendText(`/start ${payload}`);
  }

  // ------------------------------------------------------------------ wiring

  el.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.nameInput.value.trim();
    if (name) startChat(name);
  });
  el.nameInput.addEventListener("input", updateIdNote);
  el.switchUser.addEventListener("click", showLogin);

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.input.value;
    el.input.value = "";
    autosize();
    hideHints();
    sendText(text);
  });
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    } else if (event.key === "Escape") {
      hideHints();
    }
  });
  el.input.addEventListener("input", () => {
    autosize();
    const value = el.input.value;
    if (/^\/\w*$/.test(value)) {
      if (value === "/") loadCommands().then(() => renderHints(el.input.value));
      else renderHints(value);
    } else {
      hideHints();
    }
  });
  el.commandsButton.addEventListener("click", async () => {
    if (!el.hints.hidden) { hideHints(); return; }
    await loadCommands();
    if (session.commands.length) renderHints("/");
    else showToast("The bot has not set any commands (setMyCommands).");
  });
  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    if (file) uploadFile(file);
    el.fileInput.value = "";
  });

  const remembered = localStorage.getItem(CURRENT_KEY);
  if (remembered && new URLSearchParams(location.search).get("switch") === null) {
    startChat(remembered);
  } else {
    showLogin();
  }
})();
