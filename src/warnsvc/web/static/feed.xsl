<?xml version="1.0" encoding="utf-8"?>
<!-- Renders an Atom or RSS feed of warnsvc as a page when it is opened in a browser, with a
     note on how to follow it. Feed readers ignore it. Entry text is shown as text, never as
     markup. -->
<xsl:stylesheet version="1.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom"
    exclude-result-prefixes="atom">
  <xsl:output method="html" encoding="utf-8" doctype-system="about:legacy-compat"/>

  <xsl:variable name="title" select="normalize-space(/atom:feed/atom:title | /rss/channel/title)"/>
  <xsl:variable name="self"
      select="(/atom:feed/atom:link[@rel='self']/@href | /rss/channel/atom:link[@rel='self']/@href)[1]"/>

  <xsl:template match="/">
    <html lang="en">
      <head>
        <meta charset="utf-8"/>
        <meta name="viewport" content="width=device-width, initial-scale=1"/>
        <meta name="color-scheme" content="light dark"/>
        <title><xsl:value-of select="$title"/> (feed)</title>
        <link rel="stylesheet" href="/static/style.css"/>
      </head>
      <body>
        <header class="site">
          <div class="wrap">
            <a class="brand" href="/">Situations</a>
            <nav aria-label="Site">
              <ul>
                <li><a href="/">All situations</a></li>
                <li><a href="/#feeds">Feeds</a></li>
              </ul>
            </nav>
          </div>
        </header>
        <main id="main" class="wrap">
          <h1><xsl:value-of select="$title"/></h1>
          <section class="notice" aria-labelledby="follow">
            <h2 id="follow">How to follow this feed</h2>
            <p>This is a news feed: a feed reader checks it for you and shows each new change.
            Copy this page's address into your feed reader (for example Thunderbird, NetNewsWire,
            Feedly or Inoreader, under "add feed" or "subscribe"):</p>
            <p><code class="secret"><xsl:value-of select="$self"/></code></p>
            <p>Nothing else is needed: no account with this service, no email address.</p>
          </section>
          <h2>Latest changes</h2>
          <xsl:choose>
            <xsl:when test="/atom:feed/atom:entry | /rss/channel/item">
              <ol class="events">
                <xsl:apply-templates select="/atom:feed/atom:entry | /rss/channel/item"/>
              </ol>
            </xsl:when>
            <xsl:otherwise>
              <p>No change yet: the feed fills in when the first change is confirmed.</p>
            </xsl:otherwise>
          </xsl:choose>
        </main>
      </body>
    </html>
  </xsl:template>

  <xsl:template match="atom:entry">
    <li>
      <p class="event-head"><strong><xsl:value-of select="atom:title"/></strong></p>
      <p class="meta">
        <xsl:value-of select="substring(atom:updated, 1, 10)"/>
        <xsl:if test="atom:link/@href">
          <xsl:text> · </xsl:text>
          <a href="{atom:link/@href}">source page</a>
        </xsl:if>
      </p>
    </li>
  </xsl:template>

  <xsl:template match="item">
    <li>
      <p class="event-head"><strong><xsl:value-of select="title"/></strong></p>
      <p class="meta">
        <xsl:value-of select="pubDate"/>
        <xsl:if test="link">
          <xsl:text> · </xsl:text>
          <a href="{link}">source page</a>
        </xsl:if>
      </p>
    </li>
  </xsl:template>
</xsl:stylesheet>
